"""Gradient accumulation (Keras's `gradient_accumulation_steps`) on top of `optax.MultiSteps`."""

from __future__ import annotations

import optax

from adamx._validation import check_int


def accumulate_gradients(
    inner: optax.GradientTransformation, gradient_accumulation_steps: int
) -> optax.GradientTransformationExtraArgs:
    """Sums `N` gradients, then makes one `inner` update with their mean (Keras's rule).

    With `N = gradient_accumulation_steps`, on every call `acc <- g + acc`; on calls N, 2N, ...
    `inner` receives `(g + acc) / N` (computed as `(g + acc) * (1/N)`, which is what XLA runs
    for Keras's division) and `acc` resets; on the other calls the update is zero and `inner`'s
    state is kept, so anything inside (clipping, weight decay, Adam's bias correction) sees
    only real updates.

    This is `optax.MultiSteps(optax.chain(optax.scale(1/N), inner), N, use_grad_mean=False)`:
    Keras sums then divides, while MultiSteps' default running (Welford) mean gives other bits.
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
    average_then_inner = optax.chain(optax.scale(1.0 / gradient_accumulation_steps), inner)
    multi_steps = optax.MultiSteps(
        average_then_inner, gradient_accumulation_steps, use_grad_mean=False
    )
    return optax.with_extra_args_support(multi_steps.gradient_transformation())
