"""adamx in a jitted Haiku training step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest
from integrations import HIDDEN, OUT, mse, teacher_data

import adamx

hk = pytest.importorskip("haiku")


def test_haiku_model_trains_with_every_feature() -> None:
    x, y = teacher_data()
    net = hk.without_apply_rng(
        hk.transform(lambda x: hk.nets.MLP([HIDDEN, OUT], activation=jnp.tanh)(x))
    )
    params = net.init(jax.random.key(0), x)
    tx = adamx.adam(
        optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 200),
        weight_decay=1e-3,
        exclude_from_weight_decay=["b"],  # Haiku names biases "b"
        global_clipnorm=1.0,
        use_ema=True,
        gradient_accumulation_steps=2,
    )
    assert all(path.endswith("/w") for path in adamx.decayed_paths(params, ["b"]))
    state = tx.init(params)

    @jax.jit
    def train_step(params: Any, state: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: mse(net.apply(p, x), y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(400):
        params, state, loss = train_step(params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
    assert int(adamx.iterations(state)) == 200
    assert float(mse(net.apply(adamx.ema_params(state), x), y)) < losses[0] / 5
