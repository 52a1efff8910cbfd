"""The `commit` extra argument: how wrappers that may discard a call avoid copying the moments.

A wrapper that can throw a call's result away (skipping a non-finite step, an accumulation
micro-step) could run the inner update and then select `where(ok, new, old)` on every state
leaf. XLA then recomputes the new moments inside the parameter kernel from the old ones, so it
must copy the old moments before updating them in place: a parameter-sized copy per moment,
every call. Instead the wrapper passes the predicate down as `update(..., commit=ok)`, and
each transformation selects its own state and computes its output from the selected state,
which XLA updates in place.

The contract of `update(updates, state, params, commit=c)`, for a boolean scalar `c`:

- transformations (`scale_by_keras_adam`, `decoupled_weight_decay`, `ema_of_params`): where `c`
  is False the returned state is the input state, bit for bit; the updates are unspecified;
- optimizers marked with `honours_commit` (`adam`, `skip_nonfinite_updates`,
  `loss_scale_optimizer`, `accumulate_gradients`): also the updates are -0.0, so
  `optax.apply_updates` leaves every parameter bit-identical.

Where `c` is True, or `commit` is not given, the result is the one without the argument.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

T = TypeVar("T")

_HONOURS_COMMIT = "_adamx_honours_commit"


def commit_state(commit: jax.Array | None, new: T, old: T) -> T:
    """`new` where `commit` is True (or None), else `old`, leaf by leaf."""
    if commit is None:
        return new
    return optax.tree.where(commit, new, old)


def unchanged_params(updates: Any) -> Any:
    """Updates that leave every parameter bit-identical: `p + (-0.0)` is `p`, signed zeros
    included (`+0.0` would turn a `-0.0` parameter into `+0.0`)."""
    return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates)


def zero_unless(commit: jax.Array | None, updates: Any) -> Any:
    """`updates` where `commit` is True (or None), else updates that change nothing."""
    if commit is None:
        return updates
    return optax.tree.where(commit, updates, unchanged_params(updates))


def mark_honours_commit(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """Declares that `tx.update` keeps the optimizer-level `commit` contract (module docstring)."""
    setattr(tx.update, _HONOURS_COMMIT, True)
    return tx


def honours_commit(tx: optax.GradientTransformation) -> bool:
    """True if `tx` was built by adamx and keeps the optimizer-level `commit` contract."""
    return getattr(tx.update, _HONOURS_COMMIT, False)


def update_committed(
    inner: optax.GradientTransformationExtraArgs,
    commit: jax.Array,
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
) -> tuple[optax.Updates, optax.OptState]:
    """`inner.update` under the optimizer-level contract, for any `inner`: passed down where
    `inner` honours it, otherwise applied by selecting afterwards (correct, but XLA copies)."""
    if honours_commit(inner):
        return inner.update(updates, state, params, commit=commit, **extra_args)
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    return zero_unless(commit, new_updates), commit_state(commit, new_state, state)


def zero_uncommitted() -> optax.GradientTransformationExtraArgs:
    """Ends a chain of transformations so that the chain keeps the optimizer-level contract:
    zeroes (with -0.0) the updates of a call that is not committed."""

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        commit: jax.Array | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        return zero_unless(commit, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
