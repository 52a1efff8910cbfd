"""An opt-in guard: a call whose gradients are not all finite changes nothing."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._validation import check_transformation


class SkipNonFiniteState(NamedTuple):
    skipped: jax.Array  # int32[]: calls skipped so far (saturates at 2**31 - 1)
    inner_state: Any  # the wrapped optimizer's state


def all_finite(tree: Any) -> jax.Array:
    """True if every element of every (non-None) leaf is finite; True for an empty tree."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def unchanged_params(updates: Any) -> Any:
    """Updates that leave every parameter bit-identical: `p + (-0.0)` is `p`, signed zeros
    included (`+0.0` would turn a `-0.0` parameter into `+0.0`)."""
    return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates)


def skip_nonfinite_updates(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Skips every call whose gradients hold a NaN or an infinity.

    `adamx.adam(..., skip_nonfinite=True)` wraps the whole optimizer in it. Per call::

        if all gradients are finite:  inner update, as without the guard
        else:                         updates are -0.0 (parameters stay bit-identical), the inner
                                      state is kept as it was, `skipped += 1`

    Everything inside `inner` is left exactly as before the call: moments, counters and the
    learning-rate schedule, gradient accumulators (a non-finite micro-batch is not
    accumulated), EMA averages. Keras has no such option (without loss scaling it applies
    NaN gradients and the parameters become NaN; `adamx.adam` does the same by default);
    `loss_scale_optimizer` skips the same way and also adjusts its scale. Unlike
    `optax.apply_if_finite`, there is no limit after which non-finite updates go through.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.skip_nonfinite_updates(adamx.adam())
      >>> state = tx.init(jnp.ones(2))
      >>> updates, state = tx.update(jnp.array([jnp.nan, 1.0]), state, jnp.ones(2))
      >>> updates, state.skipped
      (Array([-0., -0.], dtype=float32), Array(1, dtype=int32))
    """
    check_transformation("inner", inner)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> SkipNonFiniteState:
        return SkipNonFiniteState(skipped=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

    def update_fn(
        updates: optax.Updates,
        state: SkipNonFiniteState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SkipNonFiniteState]:
        finite = all_finite(updates)
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        new_state = SkipNonFiniteState(
            skipped=jnp.where(finite, state.skipped, optax.safe_increment(state.skipped)),
            inner_state=optax.tree.where(finite, inner_state, state.inner_state),
        )
        return optax.tree.where(finite, new_updates, unchanged_params(new_updates)), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
