"""Reading Keras's counters and the learning rate out of an optimizer state."""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import optax

from adamx._hyperparams import KerasLearningRateState
from adamx._moments import ScaleByKerasAdamState

StateT = TypeVar("StateT")


def find_state(state: Any, kind: type[StateT]) -> StateT | None:
    """The first sub-state of type `kind` in `state` (depth first), or None."""
    nodes = jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, kind))
    return next((node for node in nodes if isinstance(node, kind)), None)


def _adam_state(state: Any) -> ScaleByKerasAdamState:
    adam = find_state(state, ScaleByKerasAdamState)
    if adam is None:
        raise ValueError(
            "This optimizer state holds no adamx Adam state (ScaleByKerasAdamState); pass the "
            "state of `adamx.adam(...)` or of a chain containing `adamx.scale_by_keras_adam`."
        )
    return adam


def iterations(state: Any) -> jax.Array:
    """Keras's `optimizer.iterations`: the number of real updates applied (int32, jit-safe).

    Accumulation micro-steps do not count (Keras floors its raw counter by the number of
    accumulation steps), and neither do steps skipped by dynamic loss scaling.

    Args:
      state: the state of an adamx optimizer, however wrapped.

    Returns:
      An int32 scalar array.
    """
    return _adam_state(state).count


def current_learning_rate(state: Any) -> jax.Array:
    """Keras's `optimizer.learning_rate`: the schedule at the raw call counter (float32,
    jit-safe).

    Without accumulation that is the rate the next update will use. With accumulation Keras's
    raw counter counts micro-steps, so on a micro-step this is the schedule at that counter,
    as Keras reports it; the rate of the next *real* update is the Adam state's
    `next_learning_rate` (`optax.tree.get(state, "next_learning_rate")`). If the state comes
    from `optax.inject_hyperparams(adamx.adam)`, the injected value is returned.

    Args:
      state: the state of an adamx optimizer, however wrapped (`optax.chain`,
        `optax.inject_hyperparams`, `loss_scale_optimizer`, ...).

    Returns:
      A float32 scalar array.
    """
    for injected_kind in (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState):
        injected = find_state(state, injected_kind)
        if injected is not None and "learning_rate" in injected.hyperparams:
            return injected.hyperparams["learning_rate"]
    keras = find_state(state, KerasLearningRateState)
    if keras is not None:
        return keras.keras_learning_rate
    return _adam_state(state).next_learning_rate
