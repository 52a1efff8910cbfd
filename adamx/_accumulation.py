"""Gradient accumulation (Keras's `gradient_accumulation_steps`) on top of `optax.MultiSteps`."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx._trees import compute_dtype
from adamx._validation import check_int, check_transformation

_MULTI_STEPS_HAS_ACCUMULATOR_DTYPE = (
    "accumulator_dtype" in inspect.signature(optax.MultiSteps).parameters
)


def accumulate_gradients(
    inner: optax.GradientTransformation, gradient_accumulation_steps: int
) -> optax.GradientTransformationExtraArgs:
    """Sums `N` gradients, then makes one `inner` update with their mean (Keras's rule).

    With `N = gradient_accumulation_steps`, on every call `acc <- g + acc`; on calls N, 2N, ...
    `inner` receives `(g + acc) / N` and `acc` resets; on the other calls the update is zero and
    `inner`'s state is kept, so anything inside (clipping, weight decay, Adam's bias correction)
    sees only real updates.

    Built on `optax.MultiSteps(chain(divide by N, inner), N, use_grad_mean=False)`, composed
    around rather than forked:

    - Keras sums then divides; MultiSteps' default running (Welford) mean gives other bits. The
      division is written as Keras writes it, inside a `lax.cond` as in Keras, so XLA runs it
      the same way (compiled, `x / N` becomes `x * (1/N)`; `optax.scale(1/N)` always multiplies).
    - MultiSteps zeroes micro-step updates by multiplying by 0, which lets a non-finite update
      through (`0 * nan = nan`); they are selected away instead, as Keras's `lax.cond` does.
    - The accumulator is float32, or float64 if a parameter is. Keras accumulates in each
      parameter's dtype; float32 keeps float16/bfloat16 sums from losing their small terms.
    - Keras rules that read the raw call counter are not MultiSteps' business: `adamx.adam`
      re-indexes the learning-rate schedule (`at_keras_step`) and gives the EMA, which runs on
      every call, `steps_per_update=N`.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.accumulate_gradients(optax.identity(), 2)
      >>> state = tx.init(jnp.zeros(1))
      >>> u1, state = tx.update(jnp.array([1.0]), state)
      >>> u2, state = tx.update(jnp.array([2.0]), state)
      >>> u1, u2
      (Array([0.], dtype=float32), Array([1.5], dtype=float32))
    """
    check_transformation("inner", inner)
    check_int("gradient_accumulation_steps", gradient_accumulation_steps, low=2)
    mean = optax.stateless(
        lambda updates, params: jax.tree.map(lambda g: g / gradient_accumulation_steps, updates)
    )
    average_then_inner = optax.chain(mean, inner)

    def multi_steps(tree: Any) -> optax.MultiSteps:
        # Older optax has no `accumulator_dtype` and accumulates in the parameters' dtype.
        dtype = {}
        if _MULTI_STEPS_HAS_ACCUMULATOR_DTYPE:
            dtype["accumulator_dtype"] = compute_dtype(*(x.dtype for x in jax.tree.leaves(tree)))
        return optax.MultiSteps(
            average_then_inner, gradient_accumulation_steps, use_grad_mean=False, **dtype
        )

    def init_fn(params: optax.Params) -> optax.MultiStepsState:
        return multi_steps(params).init(params)

    def update_fn(
        updates: optax.Updates,
        state: optax.MultiStepsState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.MultiStepsState]:
        wrapper = multi_steps(state.acc_grads)
        updates, state = wrapper.update(updates, state, params, **extra_args)
        emitted = state.mini_step == 0
        return jax.tree.map(lambda u: jnp.where(emitted, u, jnp.zeros_like(u)), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
