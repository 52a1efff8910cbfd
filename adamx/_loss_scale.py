"""Loss scaling: Keras's static `loss_scale_factor` and its dynamic `LossScaleOptimizer`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._commit import commit_state, mark_honours_commit, update_committed
from adamx._nonfinite import all_finite
from adamx._state import find_state
from adamx._validation import check_int, check_real, check_transformation


class StaticLossScaleState(NamedTuple):
    loss_scale: jax.Array  # float32[]: the constant factor, kept for `scale_loss`


class DynamicLossScaleState(NamedTuple):
    loss_scale: jax.Array  # float32[]: the current scale S (Keras `dynamic_scale`)
    growth_count: jax.Array  # int32[]: finite calls since the last change (Keras `step_counter`)
    inner_state: Any  # the wrapped optimizer's state


def unscale_gradients(loss_scale_factor: float) -> optax.GradientTransformation:
    """Divides gradients by a constant loss scale (Keras's `loss_scale_factor`).

    `g <- g / loss_scale_factor`. Multiply the loss by the same factor before differentiating,
    with `adamx.scale_loss(loss, state)`. The factor is also kept in the state (float32).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> tx = adamx.unscale_gradients(4.0)
      >>> tx.update(jnp.array([12.0, 16.0]), tx.init(None))[0]
      Array([3., 4.], dtype=float32)
    """
    check_real("loss_scale_factor", loss_scale_factor, low=0.0, low_open=True)

    def init_fn(params: optax.Params) -> StaticLossScaleState:
        del params
        return StaticLossScaleState(loss_scale=jnp.asarray(loss_scale_factor, jnp.float32))

    def update_fn(
        updates: optax.Updates, state: StaticLossScaleState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, StaticLossScaleState]:
        del params
        return jax.tree.map(lambda g: g / loss_scale_factor, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def unscale(g: jax.Array, scale: jax.Array | float) -> jax.Array:
    """`g / scale`, promoted to float32 at least, as Keras unscales."""
    # XLA:CPU runs Keras's float32 `g / S` as `g * fl(1/S)` (exact for the usual powers of two).
    # Written as that product, XLA fuses it into each kernel that reads `g`; a division by a
    # traced scalar it would compute once and write to memory. float64 divides truly.
    if jnp.result_type(g, jnp.float32) == jnp.float32:
        return g * (1.0 / jnp.asarray(scale, jnp.float32))
    return g / scale


def is_float32_power_of_two(value: float) -> bool:
    """True for 2**k in float32's normal range, where `g / value` is `g * (1 / value)`."""
    return math.frexp(value)[0] == 0.5 and 2.0**-126 <= value <= 2.0**127


# The `loss_scale` extra argument. `update(grads, state, params, loss_scale=S)` on a
# transformation marked with `mark_takes_loss_scale` means: `grads` are the gradients of
# `loss * S`, not yet unscaled, and the result must be the one for `unscale(g, S)`. It lets a
# norm clip unscale separately for its reduction and for the kernels that read the gradients:
# XLA:CPU cannot fuse into a reduction a product that other kernels read too, so it would
# write the unscaled gradients to a fresh buffer every call (2.8x the plain step, measured).
_TAKES_LOSS_SCALE = "_adamx_takes_loss_scale"


def mark_takes_loss_scale(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    setattr(tx.update, _TAKES_LOSS_SCALE, True)
    return tx


def takes_loss_scale(tx: optax.GradientTransformation) -> bool:
    return getattr(tx.update, _TAKES_LOSS_SCALE, False)


def kept_loss_scale(loss_scale_factor: float) -> optax.GradientTransformation:
    """`unscale_gradients`'s state without its update: for a chain whose clip unscales."""
    return optax.GradientTransformation(
        unscale_gradients(loss_scale_factor).init,
        lambda updates, state, params=None: (updates, state),
    )


def with_loss_scale(
    inner: optax.GradientTransformationExtraArgs, loss_scale_factor: float
) -> optax.GradientTransformationExtraArgs:
    """`unscale_gradients(loss_scale_factor)` then `inner`, for an `inner` that takes the
    `loss_scale` argument: float32/float64 gradients are handed over scaled, with the factor."""

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        # Keras unscales in the gradient's dtype; only float32 and float64 agree with `unscale`.
        if all(g.dtype in (jnp.float32, jnp.float64) for g in jax.tree.leaves(updates)):
            return inner.update(updates, state, params, loss_scale=loss_scale_factor, **extra_args)
        unscaled = jax.tree.map(lambda g: g / loss_scale_factor, updates)
        return inner.update(unscaled, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


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
    the unscaled gradients to memory on XLA:CPU; see `adamx._loss_scale`).

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
    pass_scale = takes_loss_scale(inner)
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
        commit: jax.Array | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, DynamicLossScaleState]:
        finite = all_finite(updates)
        scale = state.loss_scale
        inner_commit = finite if commit is None else finite & commit
        if pass_scale:
            inner_updates, inner_state = update_committed(
                inner,
                inner_commit,
                updates,
                state.inner_state,
                params,
                loss_scale=scale,
                **extra_args,
            )
        else:
            # Like Keras, unscaling promotes to float32: a float16 gradient unscaled in float16
            # would underflow, which is what scaling the loss was for.
            unscaled = jax.tree.map(lambda g: unscale(g, scale), updates)
            inner_updates, inner_state = update_committed(
                inner, inner_commit, unscaled, state.inner_state, params, **extra_args
            )
        grow = finite & (state.growth_count == dynamic_growth_steps - 1)
        loss_scale = jnp.where(finite, jnp.where(grow, scale * 2.0, scale), scale * 0.5)
        growth_count = jnp.where(finite & ~grow, state.growth_count + 1, 0).astype(jnp.int32)
        return inner_updates, DynamicLossScaleState(
            loss_scale=commit_state(commit, loss_scale, scale),
            growth_count=commit_state(commit, growth_count, state.growth_count),
            inner_state=inner_state,
        )

    return mark_honours_commit(optax.GradientTransformationExtraArgs(init_fn, update_fn))


def scale_loss(loss: jax.typing.ArrayLike, state: Any) -> jax.Array:
    """Multiplies a loss by the loss scale the state holds (Keras's `optimizer.scale_loss`).

    Reads the dynamic scale of `loss_scale_optimizer` or the static `loss_scale_factor`; with
    neither, returns the loss unchanged. The product is computed as Keras does, `loss * S` with
    `S` float32, so a float16/bfloat16 loss is promoted to float32 before scaling.
    """
    dynamic = find_state(state, DynamicLossScaleState)
    if dynamic is not None:
        return jnp.asarray(loss) * dynamic.loss_scale
    static = find_state(state, StaticLossScaleState)
    if static is not None:
        return jnp.asarray(loss) * static.loss_scale
    return jnp.asarray(loss)
