"""Keras's three gradient-clipping modes, with Keras's exact formulas."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx._capabilities import TakesLossScale
from adamx._grouping import GroupedParams
from adamx._loss_scale import unscale
from adamx._trees import abs_square, as_arrays, compute_dtype
from adamx._validation import check_real


def _unscaled_dtype(g: jax.Array, loss_scale: Any) -> Any:
    dtype = g.dtype if loss_scale is None else jnp.result_type(g.dtype, jnp.float32)
    return compute_dtype(dtype)


def _sums_of_squares(
    grads: list[jax.Array], dtypes: list[Any], loss_scale: jax.Array | float | None
) -> list[jax.Array]:
    """`sum(u**2)` per gradient, in its dtype, where `u` is the gradient unscaled by
    `loss_scale` if given (see `adamx._loss_scale`)."""
    if loss_scale is None:
        return [jnp.sum(abs_square(g.astype(d))) for g, d in zip(grads, dtypes, strict=True)]
    # Each reduction unscales with its own copy of the scale. XLA:CPU cannot fuse a product
    # that other kernels also read into a reduction, so one shared `g / S` (or one broadcast
    # of `S` shared by same-shaped gradients) would be written to memory every call.
    scale = jnp.asarray(loss_scale, jnp.float32)

    def sum_of_squares(g: jax.Array, dtype: Any) -> jax.Array:
        own_scale, _ = jax.lax.optimization_barrier((scale, g))
        return jnp.sum(abs_square(unscale(g, own_scale).astype(dtype)))

    return [sum_of_squares(g, d) for g, d in zip(grads, dtypes, strict=True)]


def check_one_clip(
    clipnorm: float | None, clipvalue: float | None, global_clipnorm: float | None
) -> None:
    """Keras's rule: at most one of the three clipping arguments is not None (even 0.0)."""
    given = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    if sum(value is not None for value in given.values()) > 1:
        received = ", ".join(f"{key}={value}" for key, value in given.items())
        raise ValueError(
            f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
            f"{received}"
        )


def keras_clipping(
    clipnorm: float | None, clipvalue: float | None, global_clipnorm: float | None
) -> optax.GradientTransformation | None:
    """The clip Keras's three arguments ask for, or None."""
    check_one_clip(clipnorm, clipvalue, global_clipnorm)
    if clipnorm is not None:
        return clip_by_norm(clipnorm)
    if clipvalue is not None:
        return clip_by_value(clipvalue)
    if global_clipnorm is not None:
        return clip_by_global_norm(global_clipnorm)
    return None


def clip_by_norm(clipnorm: float) -> optax.GradientTransformationExtraArgs:
    """Clips each gradient tensor to an L2 norm of at most `clipnorm` (Keras's `clipnorm`).

    Per tensor, with `s = sum(g**2)` and `n = sqrt(s)` if `s > 0` else `s`::

        g <- (g * clipnorm) / max(n, clipnorm)

    This is Keras's formula, multiply first: below the threshold it is not an exact identity
    (`g * c / c` moves about a quarter of elements by one ulp), and an infinite norm turns
    finite entries into 0 and infinite ones into NaN. optax has no per-tensor norm clip
    (`clip_by_block_rms` uses the RMS). float16/bfloat16 gradients are clipped in float32,
    where Keras overflows early (`[300, 300]` in float16 with `clipnorm=1` gives `[0, 0]`).
    It is `TakesLossScale`: given a `loss_scale` extra argument `S`, the gradients are those of
    `loss * S`, unscaled as `loss_scale_optimizer` unscales (`g * (1/S)` in float32 at least).

    Args:
      clipnorm: the largest L2 norm of each gradient tensor, > 0.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.clip_by_norm(1.0)
      >>> tx.update(jnp.array([3.0, 4.0]), tx.init(None))[0]
      Array([0.6, 0.8], dtype=float32)
    """
    check_real("clipnorm", clipnorm, low=0.0, low_open=True)

    def clip_one(g: jax.Array, l2sum: jax.Array, dtype: Any) -> jax.Array:
        positive = l2sum > 0
        l2sum_safe = jnp.where(positive, l2sum, jnp.ones_like(l2sum))
        l2norm = jnp.where(positive, jnp.sqrt(l2sum_safe), l2sum)
        return ((g.astype(dtype) * clipnorm) / jnp.maximum(l2norm, clipnorm)).astype(g.dtype)

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        loss_scale: jax.Array | float | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        if isinstance(updates, GroupedParams):
            raise ValueError(
                "`clipnorm` clips each tensor by its own norm, and grouped parameters "
                "(`adamx.group_leaves`) hold many tensors per buffer; use `global_clipnorm` or "
                "`clipvalue`, or keep the parameters per leaf."
            )
        leaves, treedef = jax.tree.flatten(as_arrays(updates))
        dtypes = [_unscaled_dtype(g, loss_scale) for g in leaves]
        l2sums = _sums_of_squares(leaves, dtypes, loss_scale)
        if loss_scale is not None:
            leaves = [unscale(g, loss_scale) for g in leaves]
        clipped = [clip_one(*args) for args in zip(leaves, l2sums, dtypes, strict=True)]
        return jax.tree.unflatten(treedef, clipped), state

    return TakesLossScale(lambda params: optax.EmptyState(), update_fn)


def clip_by_value(clipvalue: float) -> optax.GradientTransformation:
    """Clips every gradient entry to `[-clipvalue, clipvalue]` (Keras's `clipvalue`).

    `g <- clip(g, -clipvalue, clipvalue)`: `optax.clip`, which is bit-identical to Keras, with
    Keras's argument name and a check that the threshold is positive.

    Args:
      clipvalue: the largest absolute value of each gradient element, > 0.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.clip_by_value(1.0)
      >>> tx.update(jnp.array([-3.0, 0.5]), tx.init(None))[0]
      Array([-1. ,  0.5], dtype=float32)
    """
    check_real("clipvalue", clipvalue, low=0.0, low_open=True)
    return optax.clip(clipvalue)


def clip_by_global_norm(global_clipnorm: float) -> optax.GradientTransformationExtraArgs:
    """Scales all gradients together so their joint L2 norm is at most `global_clipnorm`.

    Keras's `global_clipnorm`, with `n = sqrt(sum(stack([sum(g_i**2) for each tensor i])))`::

        scale = c * min(1 / n, 1 / c) + (n - n)
        g_i  <- g_i * scale

    Differs from `optax.clip_by_global_norm` on purpose: the per-tensor sums are stacked and
    reduced together (optax adds them one by one, another summation order); the scale always
    multiplies (below the threshold `c * fl(1/c)` is 1 +- 1 ulp for some `c`, as in Keras); and
    a non-finite norm makes *every* gradient NaN (the `n - n` term), where optax only poisons
    the non-finite entries. Squares are summed in float32 at least.
    It is `TakesLossScale`: given a `loss_scale` extra argument `S`, the gradients are those of
    `loss * S`, unscaled as `loss_scale_optimizer` unscales (`g * (1/S)` in float32 at least).

    Args:
      global_clipnorm: the largest joint L2 norm of all gradients, > 0.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.clip_by_global_norm(1.0)
      >>> tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))[0]
      {'a': Array([0.6], dtype=float32), 'b': Array([0.8], dtype=float32)}
    """
    check_real("global_clipnorm", global_clipnorm, low=0.0, low_open=True)

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        loss_scale: jax.Array | float | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        updates = as_arrays(updates)
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        dtype = compute_dtype(*(_unscaled_dtype(g, loss_scale) for g in leaves))
        squared_norms = _sums_of_squares(leaves, [dtype] * len(leaves), loss_scale)
        norm = jnp.sqrt(jnp.sum(jnp.stack(squared_norms)))
        scale_for_finite = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm)
        scale = scale_for_finite + (norm - norm)
        if loss_scale is not None:
            updates = jax.tree.map(lambda g: unscale(g, loss_scale), updates)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return TakesLossScale(lambda params: optax.EmptyState(), update_fn)
