"""Dynamic loss scaling in a real mixed-precision step: low-precision forward, float32 weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from integrations import HIDDEN, IN, OUT, mse, teacher_data

import adamx


def init_params(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return {
        "hidden": {"kernel": rng.standard_normal((IN, HIDDEN)) / 2, "bias": np.zeros(HIDDEN)},
        "out": {"kernel": rng.standard_normal((HIDDEN, OUT)) / 6, "bias": np.zeros(OUT)},
    }


def forward(params: Any, x: jax.Array, dtype: Any) -> jax.Array:
    low = jax.tree.map(lambda p: p.astype(dtype), params)
    h = jnp.tanh(x.astype(dtype) @ low["hidden"]["kernel"] + low["hidden"]["bias"])
    return h @ low["out"]["kernel"] + low["out"]["bias"]


# float16: a scale of 2**24 overflows float16 gradients by itself for the first steps.
# bfloat16 has float32's range, so there the overflow is forced: on steps 40 and 41 a target of
# 3e38 makes `2 * (prediction - target)` overflow. 2**15 is Keras's default initial scale.
CASES = {"float16": (jnp.float16, 2.0**24, ()), "bfloat16": (jnp.bfloat16, 2.0**15, (40, 41))}


@pytest.mark.parametrize("case", list(CASES))
def test_overflowing_steps_are_skipped_and_training_recovers(case: str) -> None:
    dtype, initial_scale, poisoned_steps = CASES[case]
    x, y = teacher_data()
    poisoned = y.at[0, 0].set(3e38)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), init_params(0))
    tx = adamx.loss_scale_optimizer(adamx.adam(0.01, use_ema=True), initial_scale=initial_scale)
    state = tx.init(params)

    def scaled_loss(params: Any, state: Any, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss = mse(forward(params, x, dtype), y)
        return adamx.scale_loss(loss, state), loss

    @jax.jit
    def train_step(params: Any, state: Any, y: jax.Array) -> tuple[Any, Any, Any, jax.Array]:
        grads, loss = jax.grad(scaled_loss, has_aux=True)(params, state, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads, loss

    losses, skipped = [], 0
    for step in range(300):
        before_params, before_state = params, state
        params, state, grads, loss = train_step(
            params, state, poisoned if step in poisoned_steps else y
        )
        if step not in poisoned_steps:
            losses.append(float(loss))
        finite = all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
        if not finite:
            skipped += 1
            # Skipped: parameters and every inner state leaf bit-identical, the scale halved.
            for new, old in zip(
                jax.tree.leaves(params), jax.tree.leaves(before_params), strict=True
            ):
                np.testing.assert_array_equal(new, old)
            for new, old in zip(
                jax.tree.leaves(state.inner_state),
                jax.tree.leaves(before_state.inner_state),
                strict=True,
            ):
                np.testing.assert_array_equal(new, old)
            assert float(state.loss_scale) == float(before_state.loss_scale) / 2
        else:
            assert int(adamx.iterations(state)) == int(adamx.iterations(before_state)) + 1
    print(
        f"{case}: {skipped} steps skipped, final scale {float(state.loss_scale)}, "
        f"loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.5f}"
    )
    assert skipped >= max(len(poisoned_steps), 1)
    assert int(adamx.iterations(state)) == 300 - skipped
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert np.mean(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])
