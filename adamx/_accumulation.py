"""Gradient accumulation (Keras's `gradient_accumulation_steps`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._commit import commit_state, mark_honours_commit, update_committed
from adamx._loss_scale import is_float32_power_of_two, takes_loss_scale
from adamx._trees import compute_dtype
from adamx._validation import check_int, check_transformation


class AccumulateGradientsState(NamedTuple):
    mini_step: jax.Array  # int32[]: calls into the current cycle, 0 to N - 1
    gradient_step: jax.Array  # int32[]: real updates made so far
    acc_grads: optax.Updates  # like params, float32 at least: the sums (see below)
    carry: jax.Array  # bool[number of leaves]: the next call adds to the leaf's sum
    inner_state: Any  # the wrapped optimizer's state


def accumulate_gradients(
    inner: optax.GradientTransformation, gradient_accumulation_steps: int
) -> optax.GradientTransformationExtraArgs:
    """Sums `N` gradients, then makes one `inner` update with their mean (Keras's rule).

    With `N = gradient_accumulation_steps`, per call::

        acc <- g + (acc if carry else 0)                 Keras: acc <- acc + g
        if mini_step == N - 1:  inner update on acc / N
        else:                   updates are -0.0, inner's state is kept
        mini_step <- (mini_step + 1) % N

    so anything inside (clipping, weight decay, Adam's bias correction) sees only real updates,
    and micro-steps leave the parameters bit-identical. Differences:

    - Not `optax.MultiSteps`, whose arithmetic is the same: it runs the inner update on every
      call and selects its state afterwards, so XLA copies the moments and the accumulator
      (3 parameter-sized copies per call, about 3x the step). Here the decision is passed down
      as `commit` (see `adamx._commit`) and XLA updates everything in place.
    - The accumulator is reset lazily: right after a real update `acc_grads` still holds the
      sums just used, with `carry` False, and the next call starts from zero instead of adding
      to them. Zeroing in the same call would make the accumulator a buffer read by several
      kernels while one overwrites it, which XLA can only do by copying it. A leaf whose
      gradient is missing on the real update (`skip_missing_gradients` passes
      `has_gradient`) keeps carrying its sum into the next cycle, as in Keras, which leaves
      such an accumulator untouched.
    - The accumulator is float32, or float64 if a parameter is. Keras accumulates in each
      parameter's dtype; float32 keeps float16/bfloat16 sums from losing their small terms.
    - Keras rules that read the raw call counter are not this transformation's business:
      `adamx.adam` re-indexes the learning-rate schedule (`at_keras_step`) and gives the EMA,
      which runs on every call, `steps_per_update=N`.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.accumulate_gradients(optax.identity(), 2)
      >>> state = tx.init(jnp.zeros(1))
      >>> u1, state = tx.update(jnp.array([1.0]), state)
      >>> u2, state = tx.update(jnp.array([2.0]), state)
      >>> u1, u2
      (Array([-0.], dtype=float32), Array([1.5], dtype=float32))
    """
    check_transformation("inner", inner)
    check_int("gradient_accumulation_steps", gradient_accumulation_steps, low=2)
    pass_steps = takes_loss_scale(inner) and is_float32_power_of_two(gradient_accumulation_steps)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> AccumulateGradientsState:
        dtype = compute_dtype(*(x.dtype for x in jax.tree.leaves(params)))
        return AccumulateGradientsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            acc_grads=optax.tree.zeros_like(params, dtype=dtype),
            carry=jnp.ones([len(jax.tree.leaves(params))], jnp.bool_),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: AccumulateGradientsState,
        params: optax.Params | None = None,
        *,
        commit: jax.Array | None = None,
        has_gradient: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AccumulateGradientsState]:
        real_update = state.mini_step == gradient_accumulation_steps - 1
        leaves, treedef = jax.tree.flatten(state.acc_grads)
        summed = jax.tree.map(
            lambda carry, acc, g: jnp.where(carry, acc, jnp.zeros_like(acc)) + g.astype(acc.dtype),
            jax.tree.unflatten(treedef, list(state.carry)),
            state.acc_grads,
            updates,
        )
        # The mean is taken from the accumulator as stored, the one buffer XLA updates.
        acc_grads = commit_state(commit, summed, state.acc_grads)
        inner_commit = real_update if commit is None else real_update & commit
        if pass_steps and all(
            g.dtype == acc.dtype in (jnp.float32, jnp.float64)
            for g, acc in zip(jax.tree.leaves(updates), leaves, strict=True)
        ):
            # `acc * (1/N)` is `acc / N` for these N: the inner clip divides (adamx._loss_scale).
            new_updates, inner_state = update_committed(
                inner,
                inner_commit,
                acc_grads,
                state.inner_state,
                params,
                loss_scale=gradient_accumulation_steps,
                **extra_args,
            )
        else:
            mean = jax.tree.map(
                lambda acc, g: (acc / gradient_accumulation_steps).astype(g.dtype),
                acc_grads,
                updates,
            )
            new_updates, inner_state = update_committed(
                inner, inner_commit, mean, state.inner_state, params, **extra_args
            )
        present = [True] * len(leaves) if has_gradient is None else jax.tree.leaves(has_gradient)
        missing = jnp.asarray([not p for p in present], jnp.bool_)
        carry = jnp.where(real_update, missing, True)
        counters = (
            (state.mini_step + 1) % gradient_accumulation_steps,
            jnp.where(real_update, optax.safe_increment(state.gradient_step), state.gradient_step),
        )
        mini_step, gradient_step = commit_state(
            commit, counters, (state.mini_step, state.gradient_step)
        )
        return new_updates, AccumulateGradientsState(
            mini_step,
            gradient_step,
            acc_grads,
            commit_state(commit, carry, state.carry),
            inner_state,
        )

    return mark_honours_commit(optax.GradientTransformationExtraArgs(init_fn, update_fn))
