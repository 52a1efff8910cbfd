"""Keras's rule for parameters whose gradient is None: no step, no state change, this call."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx._accumulation import AccumulateGradientsState
from adamx._trees import path_str
from adamx._validation import check_transformation


def _is_none(x: Any) -> bool:
    return x is None


def _keep_missing(new: Any, old: Any, present: Any, params_def: Any) -> Any:
    """Per-parameter state subtrees (shaped like params) keep their old leaves where the
    gradient is missing; everything else (counters, scalars) takes its new value. Accumulators
    take their new value too: a missing gradient adds zero to them, and their old value may be
    a finished cycle's sum that this call discards."""

    def shaped_like_params(node: Any) -> bool:
        return jax.tree.structure(node) == params_def

    def accumulator(node: Any) -> bool:
        return isinstance(node, AccumulateGradientsState)

    def select(n: Any, o: Any) -> Any:
        if accumulator(n):
            return n._replace(
                inner_state=_keep_missing(n.inner_state, o.inner_state, present, params_def)
            )
        if not shaped_like_params(n):
            return n
        return jax.tree.map(lambda nl, ol, keep: nl if keep else ol, n, o, present)

    return jax.tree.map(
        select, new, old, is_leaf=lambda node: accumulator(node) or shaped_like_params(node)
    )


def skip_missing_gradients(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Lets `inner` take gradient trees with None leaves, as Keras's `apply_gradients` does.

    A parameter whose gradient is None gets no update this call, and its per-parameter state
    (moments, accumulator) is left as it was; shared counters still advance, so a parameter
    that first gets a gradient on call 2 is updated with Keras's `t = 2`. A warning names the
    parameters without gradients (at trace time); if every gradient is None, ValueError, as in
    Keras. Trees without None leaves pass straight through. `params` is required when some
    gradients are None: they tell the full tree.
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
        params_def = jax.tree.structure(params)
        return new_updates, _keep_missing(new_state, state, present, params_def)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
