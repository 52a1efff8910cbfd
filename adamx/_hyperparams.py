"""Learning-rate resolution: every form Keras accepts, turned into `count -> rate`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx._commit import check_commit, commit_state
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


class KerasLearningRateState(NamedTuple):
    calls: jax.Array  # int32[]: calls so far, Keras's raw counter `it`
    keras_learning_rate: jax.Array  # float32[]: the schedule at `it`: Keras's `learning_rate`


def keras_learning_rate(learning_rate: LearningRate) -> optax.GradientTransformationExtraArgs:
    """Tracks Keras's `optimizer.learning_rate`, the schedule read at the raw call counter.

    With gradient accumulation that counter counts micro-steps too, so Keras's property
    differs from the rate of the next real update (which `adamx.adam` keeps in
    `next_learning_rate`) on every micro-step. `adamx.adam` adds this element when it
    accumulates with a schedule (a constant needs none); `adamx.current_learning_rate` reads
    it. Passes the updates through; keeps its state where `commit` is False (a step that
    Keras's loss scaling skips is not counted).
    """
    schedule = learning_rate_schedule(learning_rate)

    def rate(calls: jax.Array) -> jax.Array:
        return jnp.array(schedule(calls), jnp.float32)

    def init_fn(params: optax.Params) -> KerasLearningRateState:
        del params
        calls = jnp.zeros([], jnp.int32)
        return KerasLearningRateState(calls, rate(calls))

    def update_fn(
        updates: optax.Updates,
        state: KerasLearningRateState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, KerasLearningRateState]:
        del params, extra_args
        calls = optax.safe_increment(state.calls)
        new_state = KerasLearningRateState(calls, rate(calls))
        return updates, commit_state(check_commit(commit), new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
