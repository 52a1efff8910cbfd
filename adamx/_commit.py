"""The `commit` extra argument: how wrappers that may discard a call avoid copying the moments.

A wrapper that may throw a call away (a non-finite step, an accumulation micro-step) passes its
decision down as `update(..., commit=c)`, `c` a boolean scalar (True, or not given, is the plain
call), rather than selecting `where(c, new, old)` afterwards: XLA would then recompute the new
moments from the old ones in the parameter kernel, and so copy every moment, every call.

- A *transformation* (`scale_by_keras_adam`, `decoupled_weight_decay`, `ema_of_params`) returns
  its input state bit for bit where `c` is False, and computes its output from the kept state
  (which XLA updates in place); its updates are then unspecified.
- A `Committable` optimizer (`adam`, the adamx wrappers, `commit_chain` of transformations) also
  returns updates of -0.0, so `optax.apply_updates` leaves every parameter bit-identical.
  `update_committed` runs any optimizer under this contract, selecting afterwards (XLA copies)
  where it is not `Committable`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

from adamx._capabilities import Committable, TakesLossScale, with_capabilities

T = TypeVar("T")


def check_commit(commit: Any) -> jax.Array | None:
    """`commit` as a boolean scalar array (None stays None); anything else is a TypeError.

    As `optax.MultiSteps` checks its predicate: a wrong shape would silently broadcast the
    state's counters."""
    if commit is None:
        return None
    array = jnp.asarray(commit)
    if array.shape != () or array.dtype != jnp.bool_:
        raise TypeError(
            "`commit` must be a boolean scalar (a Python bool or a bool array of shape ()). "
            f"Received: an array of dtype {array.dtype} and shape {array.shape}."
        )
    return array


def commit_state(commit: jax.Array | None, new: T, old: T) -> T:
    """`new` where `commit` is True (or None), else `old`, leaf by leaf."""
    if commit is None:
        return new
    return optax.tree.where(commit, new, old)


def zero_unless(commit: jax.Array | None, updates: Any) -> Any:
    """`updates` where `commit` is True (or None), else -0.0: `p + (-0.0)` is `p`, signed zeros
    included (`+0.0` would turn a `-0.0` parameter into `+0.0`)."""
    if commit is None:
        return updates
    return jax.tree.map(lambda u: jnp.where(commit, u, jnp.full_like(u, -0.0)), updates)


def both(commit: jax.Array | None, decision: jax.Array) -> jax.Array:
    """A wrapper's own decision, under the commit it was given."""
    return decision if commit is None else decision & commit


def update_committed(
    inner: optax.GradientTransformationExtraArgs,
    commit: jax.Array,
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
) -> tuple[optax.Updates, optax.OptState]:
    """`inner.update` under the `Committable` contract, for any `inner`: passed down where
    `inner` is `Committable`, otherwise applied by selecting afterwards (XLA copies)."""
    if isinstance(inner, Committable):
        return inner.update(updates, state, params, commit=commit, **extra_args)
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    return zero_unless(commit, new_updates), commit_state(commit, new_state, state)


def commit_chain(
    *transformations: optax.GradientTransformation | None,
) -> optax.GradientTransformationExtraArgs:
    """`optax.chain` of transformations that keep their state where `commit` is False (None
    entries are left out), as a `Committable`: such a call's updates become -0.0.

    Where the first transformation is `Committable` itself, its -0.0 updates are passed on:
    the later ones must pass updates through on an uncommitted call, as `ema_of_params` does.
    (A second select of the same updates would keep XLA from sharing the parameters `p + u`
    that the EMA reads with the caller's, at the cost of a parameter-sized pass.)

    The chain takes the `loss_scale` argument (`adamx._capabilities.TakesLossScale`) if its
    first transformation does: every element sees the extra arguments, and only the first one
    reads the incoming gradients."""
    parts = [t for t in transformations if t is not None]
    if any(isinstance(t, TakesLossScale) for t in parts[1:]):
        raise ValueError("Only the first transformation of a chain may take `loss_scale`.")
    chained = optax.chain(*parts)
    zeroed = bool(parts) and isinstance(parts[0], Committable)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        commit = check_commit(commit)
        if commit is not None:
            extra_args["commit"] = commit
        new_updates, new_state = chained.update(updates, state, params, **extra_args)
        return (new_updates if zeroed else zero_unless(commit, new_updates)), new_state

    takes_loss_scale = bool(parts) and isinstance(parts[0], TakesLossScale)
    return with_capabilities(committable=True, takes_loss_scale=takes_loss_scale)(
        chained.init, update_fn
    )
