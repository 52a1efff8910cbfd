"""Gradient accumulation (Keras's `gradient_accumulation_steps`)."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from adamx._capabilities import Committable, TakesLossScale
from adamx._commit import both, check_commit, commit_state, update_committed
from adamx._loss_scale import is_float32_power_of_two
from adamx._trees import compute_dtype, real_dtype, zeros_in
from adamx._validation import check_dtype, check_int, check_transformation


class AccumulateGradientsState(NamedTuple):
    """State of `accumulate_gradients`: the position in the cycle, the sums and the inner state."""

    mini_step: jax.Array  # int32[]: calls into the current cycle, 0 to N - 1
    acc_grads: optax.Updates  # like params, float32 at least: the sums (see below)
    carry: jax.Array  # bool[number of leaves]: the next call adds to the leaf's sum
    inner_state: Any  # the wrapped optimizer's state


def _added(grads: list[Any], sums: list[Any], carry: jax.Array, present: list[bool]) -> list[Any]:
    """Each gradient added to its sum (to zero where `carry` is False), in float32 at least
    and stored in the sum's dtype; a missing gradient's sum is kept."""

    def add(g: Any, acc: jax.Array, carry: jax.Array) -> jax.Array:
        dtype = jnp.result_type(compute_dtype(real_dtype(acc.dtype)), acc.dtype)
        total = jnp.where(carry, acc, jnp.zeros_like(acc)).astype(dtype)
        return (total + jnp.asarray(g, dtype)).astype(acc.dtype)

    return [
        add(g, acc, c) if keep else acc
        for g, acc, c, keep in zip(grads, sums, carry, present, strict=True)
    ]


def accumulate_gradients(
    inner: optax.GradientTransformation,
    gradient_accumulation_steps: int,
    *,
    accumulation_dtype: Any = None,
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
      as `commit` (see `adamx.Committable`) and XLA updates everything in place. Around an
      `inner` that is not `Committable`, its state is selected afterwards, as MultiSteps does.
    - The accumulator is reset lazily: right after a real update `acc_grads` still holds the
      sums just used, with `carry` False, and the next call starts from zero instead of adding
      to them. Zeroing in the same call would make the accumulator a buffer read by several
      kernels while one overwrites it, which XLA can only do by copying it.
    - A leaf whose gradient is missing (`skip_missing_gradients` passes `has_gradient`) keeps
      its sum and its `carry`, as Keras leaves its accumulator alone: missing on a real update,
      its sum carries into the next cycle. `inner` gets a zero gradient for it, so a global
      norm leaves it out, as Keras's does.
    - The sum of `N` gradients is the gradient of `N` times the mean loss: where `N` is a power
      of two and `inner` is `TakesLossScale` (a norm clip comes first), the sums are handed
      down with `loss_scale=N` and the clip divides them, the same
      numbers as `acc / N` with less memory traffic on XLA:CPU.
    - The accumulator is float32, or float64 if a parameter is (`accumulation_dtype` stores it
      in another; the sums are computed in float32 at least). Keras accumulates in each
      parameter's dtype; float32 keeps float16/bfloat16 sums from losing their small terms.
    - Keras rules that read the raw call counter are not this transformation's business:
      `adamx.adam` re-indexes the learning-rate schedule (`at_keras_step`) and gives the EMA,
      which runs on every call, `steps_per_update=N`.

    Args:
      inner: the optimizer that makes the real update.
      gradient_accumulation_steps: `N`, an integer >= 2.
      accumulation_dtype: storage dtype of the sums; None: float32, or float64 if a parameter
        is.

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
    check_dtype("accumulation_dtype", accumulation_dtype)
    steps = gradient_accumulation_steps
    hand_down = isinstance(inner, TakesLossScale) and is_float32_power_of_two(steps)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> AccumulateGradientsState:
        dtypes = [real_dtype(jnp.result_type(x)) for x in jax.tree.leaves(params)]
        dtype = compute_dtype(*dtypes) if accumulation_dtype is None else accumulation_dtype
        return AccumulateGradientsState(
            mini_step=jnp.zeros([], jnp.int32),
            acc_grads=zeros_in(params, dtype),  # complex parameters: complex sums
            carry=jnp.ones([len(jax.tree.leaves(params))], jnp.bool_),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: AccumulateGradientsState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        has_gradient: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AccumulateGradientsState]:
        commit = check_commit(commit)
        real_update = state.mini_step == steps - 1
        grads, structure = jax.tree.flatten(updates)
        treedef = cast(Any, structure)  # jax's stubs lack PyTreeDef's methods
        sums = treedef.flatten_up_to(state.acc_grads)
        present = [True] * len(grads) if has_gradient is None else jax.tree.leaves(has_gradient)
        # The mean is taken from the accumulator as stored, the one buffer XLA updates.
        sums = commit_state(commit, _added(grads, sums, state.carry, present), sums)
        if hand_down and all(
            jnp.result_type(g) == acc.dtype in (jnp.float32, jnp.float64)
            for g, acc in zip(grads, sums, strict=True)
        ):
            extra_args["loss_scale"] = steps
            means = sums
        else:
            means = [
                (acc / steps).astype(jnp.result_type(g)) for g, acc in zip(grads, sums, strict=True)
            ]
        means = [m if keep else g for m, g, keep in zip(means, grads, present, strict=True)]
        real = both(commit, real_update)
        inner_updates = treedef.unflatten(means)
        new_updates, inner_state = update_committed(
            inner, real, inner_updates, state.inner_state, params, **extra_args
        )
        carry = jnp.where(jnp.asarray(present, jnp.bool_), ~real_update, state.carry)
        return new_updates, AccumulateGradientsState(
            mini_step=commit_state(commit, (state.mini_step + 1) % steps, state.mini_step),
            acc_grads=treedef.unflatten(sums),
            carry=commit_state(commit, carry, state.carry),
            inner_state=inner_state,
        )

    return Committable(init_fn, update_fn)
