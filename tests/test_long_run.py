"""A 10,000-call run with every feature on: it stays finite and converges (slow: -m slow)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from integrations import HIDDEN, IN, OUT, mse, teacher_data

import adamx

CALLS = 10_000
POISONED = range(500, CALLS, 1000)  # a NaN batch every 1000 calls


@pytest.mark.slow
def test_ten_thousand_calls_with_every_feature() -> None:
    x, y = teacher_data(seed=3, n=512)
    rng = np.random.default_rng(0)
    params = {
        "hidden": {
            "kernel": jnp.asarray(rng.normal(size=(IN, HIDDEN)) / 2, jnp.float32),
            "bias": jnp.zeros(HIDDEN),
        },
        "out": {
            "kernel": jnp.asarray(rng.normal(size=(HIDDEN, OUT)) / 6, jnp.float32),
            "bias": jnp.zeros(OUT),
        },
    }
    tx = adamx.loss_scale_optimizer(
        adamx.adam(
            optax.warmup_cosine_decay_schedule(0.0, 0.01, 500, CALLS // 2, 1e-4),
            amsgrad=True,
            weight_decay=1e-4,
            exclude_from_weight_decay=["bias"],
            global_clipnorm=1.0,
            use_ema=True,
            ema_momentum=0.99,
            ema_overwrite_frequency=1000,
            gradient_accumulation_steps=2,
            skip_nonfinite=True,
        ),
        initial_scale=2.0**20,  # float16 gradients overflow at first: the scale must come down
        dynamic_growth_steps=500,
    )
    state = tx.init(params)

    def loss_fn(params: Any, state: Any, xb: jax.Array, yb: jax.Array) -> Any:
        low = jax.tree.map(lambda p: p.astype(jnp.float16), params)
        h = jnp.tanh(xb.astype(jnp.float16) @ low["hidden"]["kernel"] + low["hidden"]["bias"])
        loss = mse(h @ low["out"]["kernel"] + low["out"]["bias"], yb)
        return adamx.scale_loss(loss, state), loss

    @jax.jit
    def step(params: Any, state: Any, xb: jax.Array, yb: jax.Array) -> Any:
        grads, loss = jax.grad(loss_fn, has_aux=True)(params, state, xb, yb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    start = time.perf_counter()
    initial = float(mse(forward32(params, x), y))
    scales = []
    for call in range(CALLS):
        batch = rng.integers(0, len(x), size=64)
        xb = x[batch].at[0, 0].set(jnp.nan) if call in POISONED else x[batch]
        params, state, _ = step(params, state, xb, y[batch])
        scales.append(float(state.loss_scale))
    seconds = time.perf_counter() - start
    final = float(mse(forward32(params, x), y))
    ema = float(mse(forward32(adamx.ema_params(state), x), y))
    updates = int(adamx.iterations(state))
    print(
        f"{CALLS} calls in {seconds:.1f}s: loss {initial:.4f} -> {final:.6f} (EMA {ema:.6f}); "
        f"{updates} real updates; loss scale 2**20 -> min {min(scales):g}, final "
        f"{scales[-1]:g}"
    )
    assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves((params, state)))
    assert final < initial / 50 and ema < initial / 50
    assert CALLS // 2 - 50 < updates < CALLS // 2  # overflows and NaN batches were skipped


def forward32(params: Any, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]
