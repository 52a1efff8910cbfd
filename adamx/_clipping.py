"""Keras's three gradient-clipping modes, with Keras's exact formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx._grouping import GroupedParams
from adamx._trees import compute_dtype
from adamx._validation import check_real


def _check_threshold(name: str, value: float) -> None:
    check_real(name, value, low=0.0, low_open=True)


def clip_by_norm(clipnorm: float) -> optax.GradientTransformation:
    """Clips each gradient tensor to an L2 norm of at most `clipnorm` (Keras's `clipnorm`).

    Per tensor, with `s = sum(g**2)` and `n = sqrt(s)` if `s > 0` else `s`::

        g <- (g * clipnorm) / max(n, clipnorm)

    This is Keras's formula, multiply first: below the threshold it is not an exact identity
    (`g * c / c` moves about a quarter of elements by one ulp), and an infinite norm turns
    finite entries into 0 and infinite ones into NaN. optax has no per-tensor norm clip
    (`clip_by_block_rms` uses the RMS). float16/bfloat16 gradients are clipped in float32,
    where Keras overflows early (`[300, 300]` in float16 with `clipnorm=1` gives `[0, 0]`).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.clip_by_norm(1.0)
      >>> tx.update(jnp.array([3.0, 4.0]), tx.init(None))[0]
      Array([0.6, 0.8], dtype=float32)
    """
    _check_threshold("clipnorm", clipnorm)

    def clip_one(g: jax.Array) -> jax.Array:
        x = g.astype(compute_dtype(g.dtype))
        l2sum = jnp.sum(jnp.square(x), keepdims=True)
        positive = l2sum > 0
        l2sum_safe = jnp.where(positive, l2sum, jnp.ones_like(l2sum))
        l2norm = jnp.where(positive, jnp.sqrt(l2sum_safe), l2sum)
        return ((x * clipnorm) / jnp.maximum(l2norm, clipnorm)).astype(g.dtype)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        if isinstance(updates, GroupedParams):
            raise ValueError(
                "`clipnorm` clips each tensor by its own norm, and grouped parameters "
                "(`adamx.group_leaves`) hold many tensors per buffer; use `global_clipnorm` or "
                "`clipvalue`, or keep the parameters per leaf."
            )
        return jax.tree.map(clip_one, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_value(clipvalue: float) -> optax.GradientTransformation:
    """Clips every gradient entry to `[-clipvalue, clipvalue]` (Keras's `clipvalue`).

    `g <- clip(g, -clipvalue, clipvalue)`: `optax.clip`, which is bit-identical to Keras, with
    Keras's argument name and a check that the threshold is positive.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.clip_by_value(1.0)
      >>> tx.update(jnp.array([-3.0, 0.5]), tx.init(None))[0]
      Array([-1. ,  0.5], dtype=float32)
    """
    _check_threshold("clipvalue", clipvalue)
    return optax.clip(clipvalue)


def clip_by_global_norm(global_clipnorm: float) -> optax.GradientTransformation:
    """Scales all gradients together so their joint L2 norm is at most `global_clipnorm`.

    Keras's `global_clipnorm`, with `n = sqrt(sum(stack([sum(g_i**2) for each tensor i])))`::

        scale = c * min(1 / n, 1 / c) + (n - n)
        g_i  <- g_i * scale

    Differs from `optax.clip_by_global_norm` on purpose: the per-tensor sums are stacked and
    reduced together (optax adds them one by one, another summation order); the scale always
    multiplies (below the threshold `c * fl(1/c)` is 1 +- 1 ulp for some `c`, as in Keras); and
    a non-finite norm makes *every* gradient NaN (the `n - n` term), where optax only poisons
    the non-finite entries. Squares are summed in float32 at least.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.clip_by_global_norm(1.0)
      >>> tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))[0]
      {'a': Array([0.6], dtype=float32), 'b': Array([0.8], dtype=float32)}
    """
    _check_threshold("global_clipnorm", global_clipnorm)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        dtype = compute_dtype(*(g.dtype for g in leaves))
        squared_norms = [jnp.sum(jnp.square(g.astype(dtype))) for g in leaves]
        norm = jnp.sqrt(jnp.sum(jnp.stack(squared_norms)))
        scale_for_finite = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
        scale = scale_for_finite + (norm - norm)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
