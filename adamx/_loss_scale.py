"""Loss scaling: Keras's static `loss_scale_factor` and its dynamic `LossScaleOptimizer`.

Both wrap an optimizer and divide its gradients by the scale first. Where the inner optimizer
is `TakesLossScale` (it starts with a norm clip), they hand it the still-scaled gradients with
`update(..., loss_scale=S)` instead, and the clip unscales them itself, separately for its
reduction and for the kernels that read the gradients. XLA:CPU cannot fuse into a reduction a
product that other kernels read too, so unscaling once, before the clip, makes it write the
unscaled gradients to a fresh buffer every call (2.8x the plain step, measured). The result is
the same: `unscale(g, S)` is `g * (1/S)` in float32, as XLA:CPU runs Keras's `g / S`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._capabilities import Committable, TakesLossScale, with_capabilities
from adamx._commit import both, check_commit, commit_state, update_committed
from adamx._nonfinite import all_finite
from adamx._state import find_state
from adamx._validation import check_int, check_real, check_transformation

_PRODUCT_DTYPES = (jnp.float32, jnp.float64)  # where `g * (1/S)` is `g / S` for S = 2**k


class StaticLossScaleState(NamedTuple):
    """State of `static_loss_scale`: the constant factor and the inner state."""

    loss_scale: jax.Array  # float32[]: the constant factor, kept for `scale_loss`
    inner_state: Any  # the wrapped optimizer's state


class DynamicLossScaleState(NamedTuple):
    """State of `loss_scale_optimizer`: the current scale, its growth counter, the inner state."""

    loss_scale: jax.Array  # float32[]: the current scale S (Keras `dynamic_scale`)
    growth_count: jax.Array  # int32[]: finite calls since the last change (Keras `step_counter`)
    inner_state: Any  # the wrapped optimizer's state


def unscale(g: jax.Array, scale: jax.Array | float) -> jax.Array:
    """`g / scale`, promoted to float32 at least, as Keras's `LossScaleOptimizer` unscales."""
    # XLA:CPU runs Keras's float32 `g / S` as `g * fl(1/S)` (exact for the usual powers of two).
    # Written as that product, XLA fuses it into each kernel that reads `g`; a division by a
    # traced scalar it would compute once and write to memory. float64 divides truly.
    if jnp.result_type(g, jnp.float32) == jnp.float32:
        return g * (1.0 / jnp.asarray(scale, jnp.float32))
    return g / scale


def is_float32_power_of_two(value: Any) -> bool:
    """True for 2**k in float32's normal range, where `g / value` is `g * (1 / value)`; False
    for a traced value (injected by `optax.inject_hyperparams`), which cannot be inspected."""
    if isinstance(value, jax.core.Tracer):
        return False
    return math.frexp(float(value))[0] == 0.5 and 2.0**-126 <= value <= 2.0**127


def static_loss_scale(
    inner: optax.GradientTransformation, loss_scale_factor: float
) -> optax.GradientTransformationExtraArgs:
    """Divides gradients by a constant loss scale before `inner` (Keras's `loss_scale_factor`).

    `g <- g / loss_scale_factor`, in the gradient's dtype, as Keras unscales. Multiply the loss
    by the same factor before differentiating, with `adamx.scale_loss(loss, state)`, which reads
    the factor from the state (float32). Where the factor is a power of two, the gradients are
    float32 or float64 and `inner` is `TakesLossScale` (a norm clip comes first), the
    gradients are handed down still scaled, with the factor: the same numbers, less memory
    traffic.

    Args:
      inner: the optimizer the unscaled gradients go to (any optax transformation).
      loss_scale_factor: the constant the loss was multiplied by, > 0.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.static_loss_scale(optax.identity(), 4.0)
      >>> tx.update(jnp.array([12.0, 16.0]), tx.init(None))[0]
      Array([3., 4.], dtype=float32)
    """
    check_transformation("inner", inner)
    check_real("loss_scale_factor", loss_scale_factor, low=0.0, low_open=True)
    inner = optax.with_extra_args_support(inner)
    hand_down = isinstance(inner, TakesLossScale) and is_float32_power_of_two(loss_scale_factor)

    def init_fn(params: optax.Params) -> StaticLossScaleState:
        return StaticLossScaleState(
            loss_scale=jnp.asarray(loss_scale_factor, jnp.float32), inner_state=inner.init(params)
        )

    def update_fn(
        updates: optax.Updates,
        state: StaticLossScaleState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, StaticLossScaleState]:
        # Keras unscales in the gradient's dtype; only float32 and float64 agree with `unscale`.
        if hand_down and all(g.dtype in _PRODUCT_DTYPES for g in jax.tree.leaves(updates)):
            extra_args["loss_scale"] = loss_scale_factor
        else:
            updates = jax.tree.map(lambda g: g / loss_scale_factor, updates)
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        return new_updates, state._replace(inner_state=inner_state)

    # Committable where `inner` is (`commit` passes through); the scale is divided out here.
    committable = isinstance(inner, Committable)
    return with_capabilities(committable=committable, takes_loss_scale=False)(init_fn, update_fn)


def loss_scale_optimizer(
    inner: optax.GradientTransformation,
    initial_scale: float = 2.0**15,
    dynamic_growth_steps: int = 2000,
) -> optax.GradientTransformationExtraArgs:
    """Dynamic loss scaling around any optimizer (Keras's `LossScaleOptimizer`).

    Gradients arrive computed from `loss * S` (use `adamx.scale_loss(loss, state)`). Per call,
    with `S` the scale before this call::

        if all gradients are finite:
            inner step on g / S
            if growth_count == dynamic_growth_steps - 1: S <- 2 S, growth_count <- 0
            else: growth_count <- growth_count + 1
        else:
            skip: parameters and the inner state stay bit-identical; S <- S / 2, growth_count <- 0

    The scale is float32 whatever the parameters' dtype. As in Keras there is no floor or
    ceiling: from 2**15, S reaches 0 after 142 consecutive non-finite calls on XLA:CPU, which
    flushes float32 subnormals (Keras gives the same). optax has no equivalent
    (`optax.apply_if_finite` skips steps but keeps no scale). Keras's constructor silently
    sets the inner optimizer's `loss_scale_factor` to None; here an inner optimizer with a
    static `loss_scale_factor` is a ValueError at `init`, since its gradients would be unscaled
    twice. Around `adamx.adam` with `clipnorm` or `global_clipnorm`, the gradients are handed
    over still scaled, with `S`, and the clip unscales them (the same numbers, without writing
    the unscaled gradients to memory on XLA:CPU).

    Args:
      inner: the optimizer the unscaled gradients go to (any optax transformation).
      initial_scale: the scale to start from, > 0. Default 2**15, Keras's.
      dynamic_growth_steps: double the scale after this many finite calls in a row, an integer
        >= 1. Default 2000, Keras's.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.loss_scale_optimizer(adamx.adam(), initial_scale=8.0)
      >>> state = tx.init(jnp.zeros(2))
      >>> _, state = tx.update(jnp.array([jnp.inf, 1.0]), state, jnp.zeros(2))
      >>> state.loss_scale
      Array(4., dtype=float32)
    """
    check_transformation("inner", inner)
    check_real("initial_scale", initial_scale, low=0.0, low_open=True)
    check_int("dynamic_growth_steps", dynamic_growth_steps, low=1)
    hand_down = isinstance(inner, TakesLossScale)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> DynamicLossScaleState:
        inner_state = inner.init(params)
        if find_state(inner_state, StaticLossScaleState) is not None:
            raise ValueError(
                "loss_scale_optimizer wraps an optimizer that has a static `loss_scale_factor`; "
                "build the inner optimizer without it (Keras drops it silently)."
            )
        return DynamicLossScaleState(
            loss_scale=jnp.asarray(initial_scale, jnp.float32),
            growth_count=jnp.zeros([], jnp.int32),
            inner_state=inner_state,
        )

    def update_fn(
        updates: optax.Updates,
        state: DynamicLossScaleState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, DynamicLossScaleState]:
        commit = check_commit(commit)
        finite = all_finite(updates)
        scale = state.loss_scale
        if hand_down:
            extra_args["loss_scale"] = scale
        else:
            # Like Keras, unscaling promotes to float32: a float16 gradient unscaled in float16
            # would underflow, which is what scaling the loss was for.
            updates = jax.tree.map(lambda g: unscale(g, scale), updates)
        inner_updates, inner_state = update_committed(
            inner, both(commit, finite), updates, state.inner_state, params, **extra_args
        )
        grow = finite & (state.growth_count == dynamic_growth_steps - 1)
        loss_scale = jnp.where(finite, jnp.where(grow, scale * 2.0, scale), scale * 0.5)
        growth_count = jnp.where(finite & ~grow, state.growth_count + 1, 0).astype(jnp.int32)
        return inner_updates, DynamicLossScaleState(
            loss_scale=commit_state(commit, loss_scale, scale),
            growth_count=commit_state(commit, growth_count, state.growth_count),
            inner_state=inner_state,
        )

    return Committable(init_fn, update_fn)


def scale_loss(loss: jax.typing.ArrayLike, state: Any) -> jax.Array:
    """Multiplies a loss by the loss scale the state holds (Keras's `optimizer.scale_loss`).

    Reads the dynamic scale of `loss_scale_optimizer` or the static `loss_scale_factor`; with
    neither, returns the loss unchanged. The product is computed as Keras does, `loss * S` with
    `S` float32, so a float16/bfloat16 loss is promoted to float32 before scaling.

    Args:
      loss: the loss to scale (a scalar).
      state: the optimizer state (any adamx optimizer's, however wrapped).

    Returns:
      `loss * S` in float32 at least, or `loss` if the state holds no loss scale.
    """
    kinds: tuple[type[Any], ...] = (DynamicLossScaleState, StaticLossScaleState)
    found = next((s for s in map(lambda k: find_state(state, k), kinds) if s is not None), None)
    return jnp.asarray(loss) if found is None else jnp.asarray(loss) * found.loss_scale
