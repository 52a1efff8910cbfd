"""Learning-rate resolution: every form Keras accepts, turned into `count -> rate`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import numpy as np

from adamx._validation import check_real

Schedule: TypeAlias = Callable[[jax.Array], jax.typing.ArrayLike]
LearningRate: TypeAlias = float | int | jax.Array | Callable[..., Any]
"""A number, an optax schedule `step -> rate`, a Keras `LearningRateSchedule` (also
`step -> rate`), or a Keras-style zero-argument callable."""


def _accepts_a_step(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn).bind(0)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): assume a schedule
        return True
    return True


def learning_rate_schedule(learning_rate: LearningRate) -> Schedule:
    """Returns `count -> rate` for any accepted form of `learning_rate`.

    A number is rounded to float32 once, as Keras stores it in a float32 variable. A callable
    that accepts one argument is a schedule called with the step counter (optax schedules and
    Keras `LearningRateSchedule` objects alike). A zero-argument callable is called on every
    evaluation, as Keras does; under `jax.jit` that means once, at trace time.
    """
    if callable(learning_rate):
        if _accepts_a_step(learning_rate):
            return learning_rate
        zero_argument = learning_rate
        return lambda count: zero_argument()
    check_real("learning_rate", learning_rate, low=0.0)
    if isinstance(learning_rate, jax.Array):  # for example injected by optax.inject_hyperparams
        return lambda count: learning_rate
    rate = np.float32(learning_rate)  # not a device array: donating a state must not delete it
    return lambda count: rate


def at_keras_step(schedule: Schedule, accumulation_steps: int | None) -> Schedule:
    """Re-indexes a schedule of real updates by Keras's raw call counter.

    Keras evaluates schedules at its raw counter `it`, which counts accumulation micro-steps.
    The `k`-th real update (`count = k - 1` updates done before it) happens on call `k * N`, where
    `it = k * N - 1`; so the schedule is read at `(count + 1) * N - 1`.
    """
    if accumulation_steps is None:
        return schedule
    return lambda count: schedule((count + 1) * accumulation_steps - 1)
