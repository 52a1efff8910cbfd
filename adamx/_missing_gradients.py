"""Keras's rule for parameters whose gradient is None: no step, no state change, this call."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx._capabilities import like
from adamx._trees import path_str
from adamx._validation import check_transformation


def _is_none(x: Any) -> bool:
    return x is None


def _keep_missing(inner: optax.GradientTransformation, new: Any, old: Any, present: Any) -> Any:
    """`new`, except that the state held per parameter (every copy of the parameter tree in
    the state, as `optax.tree_map_params` finds them) keeps its old leaves where the gradient
    is missing; counters and other scalars take their new value."""
    keep_new = optax.tree_map_params(
        inner,
        lambda _, has_gradient: has_gradient,
        new,
        present,
        transform_non_params=lambda _: True,
    )
    return jax.tree.map(lambda keep, n, o: n if keep else o, keep_new, new, old)


def skip_missing_gradients(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Lets `inner` take gradient trees with None leaves, as Keras's `apply_gradients` does.

    A parameter whose gradient is None gets no update this call, and its per-parameter state
    (moments, accumulator) is left as it was; shared counters still advance, so a parameter
    that first gets a gradient on call 2 is updated with Keras's `t = 2`. A warning names the
    parameters without gradients (at trace time); if every gradient is None, ValueError, as in
    Keras. Trees without None leaves pass straight through. `params` is required when some
    gradients are None: they tell the full tree. `inner` gets zeros for the missing gradients
    and a `has_gradient` extra argument (a pytree of Python bools), which
    `accumulate_gradients` reads. The result keeps `inner`'s capabilities (`Committable`,
    `TakesLossScale`).

    Args:
      inner: the optimizer to wrap (any optax transformation).
    """
    check_transformation("inner", inner)
    inner = optax.with_extra_args_support(inner)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        leaves = jax.tree.leaves(updates, is_leaf=_is_none)
        if all(leaf is not None for leaf in leaves):
            return inner.update(updates, state, params, **extra_args)
        if all(leaf is None for leaf in leaves):
            raise ValueError("No gradients provided for any variable.")
        if params is None:
            raise ValueError(
                "Gradients with None leaves need `params`: call update(grads, state, params)."
            )
        present = jax.tree.map(lambda g: g is not None, updates, is_leaf=_is_none)
        missing = [
            path_str(path)
            for path, has_gradient in jax.tree_util.tree_flatten_with_path(present)[0]
            if not has_gradient
        ]
        warnings.warn(
            f"Gradients do not exist for parameters {missing}; they get no update this call.",
            stacklevel=2,
        )
        filled = jax.tree.map(
            lambda g, p: jnp.zeros_like(p) if g is None else g, updates, params, is_leaf=_is_none
        )
        new_updates, new_state = inner.update(
            filled, state, params, has_gradient=present, **extra_args
        )
        new_updates = jax.tree.map(
            lambda u, keep: u if keep else jnp.full_like(u, -0.0), new_updates, present
        )
        return new_updates, _keep_missing(inner, new_state, state, present)

    return like(inner)(inner.init, update_fn)
