"""Gradient accumulation (Keras's `gradient_accumulation_steps`) on top of `optax.MultiSteps`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx._validation import check_int


def accumulate_gradients(
    inner: optax.GradientTransformation, gradient_accumulation_steps: int
) -> optax.GradientTransformationExtraArgs:
    """Sums `N` gradients, then makes one `inner` update with their mean (Keras's rule).

    With `N = gradient_accumulation_steps`, on every call `acc <- g + acc`; on calls N, 2N, ...
    `inner` receives `(g + acc) / N` and `acc` resets; on the other calls the update is zero and
    `inner`'s state is kept, so anything inside (clipping, weight decay, Adam's bias correction)
    sees only real updates.

    This is `optax.MultiSteps(chain(divide by N, inner), N, use_grad_mean=False)`: Keras sums
    then divides, while MultiSteps' default running (Welford) mean gives other bits. The
    division is written as Keras writes it, inside a `lax.cond` like Keras's, so XLA runs it the
    same way (compiled, `x / N` becomes `x * (1/N)`; `optax.scale(1/N)` would always multiply).
    MultiSteps zeroes micro-step updates by multiplying by 0, which lets a non-finite update
    through (`0 * nan = nan`); here they are selected away, as Keras's `lax.cond` does, so
    parameters stay put until the real update.
    Keras rules that read the raw call counter are not MultiSteps' business: `adamx.adam`
    re-indexes the learning-rate schedule (`at_keras_step`) and gives the EMA, which runs on
    every call, `steps_per_update=N`. The accumulator is float32.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.accumulate_gradients(optax.identity(), 2)
      >>> state = tx.init(jnp.zeros(1))
      >>> u1, state = tx.update(jnp.array([1.0]), state)
      >>> u2, state = tx.update(jnp.array([2.0]), state)
      >>> u1, u2
      (Array([0.], dtype=float32), Array([1.5], dtype=float32))
    """
    check_int("gradient_accumulation_steps", gradient_accumulation_steps, low=2)
    mean = optax.stateless(
        lambda updates, params: jax.tree.map(lambda g: g / gradient_accumulation_steps, updates)
    )
    average_then_inner = optax.chain(mean, inner)
    multi_steps = optax.MultiSteps(
        average_then_inner, gradient_accumulation_steps, use_grad_mean=False
    )

    def update_fn(
        updates: optax.Updates,
        state: optax.MultiStepsState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.MultiStepsState]:
        updates, state = multi_steps.update(updates, state, params, **extra_args)
        emitted = state.mini_step == 0
        return jax.tree.map(lambda u: jnp.where(emitted, u, jnp.zeros_like(u)), updates), state

    return optax.GradientTransformationExtraArgs(multi_steps.init, update_fn)
