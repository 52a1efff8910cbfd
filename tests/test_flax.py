"""adamx inside Flax training steps: NNX's `nnx.Optimizer` and linen's `TrainState`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from integrations import HIDDEN, IN, OUT, mse, teacher_data
from test_optax_contracts import CONFIGS as CONTRACT_CONFIGS

import adamx

nnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")
train_state = pytest.importorskip("flax.training.train_state")

FEATURES: dict[str, Any] = {
    "learning_rate": optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 200),
    "weight_decay": 1e-3,
    "exclude_from_weight_decay": ["bias"],
    "global_clipnorm": 1.0,
}


class MLP(nnx.Module):  # type: ignore[misc]
    def __init__(self, rngs: Any) -> None:
        self.hidden = nnx.Linear(IN, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


def nnx_loss(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return mse(model(x), y)


@nnx.jit
def nnx_step(model: Any, optimizer: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


def pure_params(model: Any) -> Any:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_nnx_optimizer_trains_and_matches_plain_optax() -> None:
    """The loss falls 20x, and nnx.Optimizer gives the same parameters as a functional loop."""
    x, y = teacher_data()
    model = MLP(nnx.Rngs(0))
    graphdef, initial = nnx.split(model, nnx.Param)
    initial = jax.tree.map(jnp.copy, initial)  # split shares the model's variables
    optimizer = nnx.Optimizer(model, adamx.adam(**FEATURES), wrt=nnx.Param)
    # NNX paths end in `.value` (`hidden/bias/value`); exclusions see `hidden/bias`.
    assert adamx.decayed_paths(nnx.state(model, nnx.Param), ["^b"]) == [
        "hidden/kernel",
        "out/kernel",
    ]
    losses = [float(nnx_step(model, optimizer, x, y)) for _ in range(200)]
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])
    assert int(adamx.iterations(optimizer.opt_state)[...]) == 200

    tx = adamx.adam(**FEATURES)

    @jax.jit
    def functional_step(params: Any, state: Any) -> tuple[Any, Any]:
        grads = jax.grad(lambda p: nnx_loss(nnx.merge(graphdef, p), x, y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = initial, tx.init(initial)
    for _ in range(200):
        params, state = functional_step(params, state)
    for ours, reference in zip(
        jax.tree.leaves(pure_params(model)), jax.tree.leaves(nnx.to_pure_dict(params)), strict=True
    ):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_nnx_evaluates_with_ema_weights_without_touching_the_model() -> None:
    x, y = teacher_data()
    model = MLP(nnx.Rngs(1))
    optimizer = nnx.Optimizer(
        model, adamx.adam(0.01, use_ema=True, ema_momentum=0.9), wrt=nnx.Param
    )
    trajectory = []
    for _ in range(30):
        nnx_step(model, optimizer, x, y)
        trajectory.append(jax.tree.map(np.asarray, pure_params(model)))

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ema = nnx.to_pure_dict(adamx.ema_params(optimizer.opt_state))
    nnx.replace_by_pure_dict(params, ema)
    ema_model = nnx.merge(graphdef, params, rest)

    # The oracle: the EMA recursion over the recorded parameters in float64 (first step copies).
    expected = jax.tree.map(lambda p: p.astype(np.float64), trajectory[0])
    for p in trajectory[1:]:
        expected = jax.tree.map(lambda e, q: 0.9 * e + 0.1 * q, expected, p)
    for got, want in zip(jax.tree.leaves(ema), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for kept, last in zip(
        jax.tree.leaves(pure_params(model)), jax.tree.leaves(trajectory[-1]), strict=True
    ):
        np.testing.assert_array_equal(kept, last)
    assert float(nnx_loss(ema_model, x, y)) != float(nnx_loss(model, x, y))
    assert np.isfinite(float(nnx_loss(ema_model, x, y)))


def test_nnx_ema_overwrite_goes_through_optimizer_update() -> None:
    x, y = teacher_data()
    model = MLP(nnx.Rngs(2))
    tx = adamx.adam(0.01, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=5)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for step in range(1, 13):
        nnx_step(model, optimizer, x, y)
        ema = jax.tree.leaves(nnx.to_pure_dict(adamx.ema_params(optimizer.opt_state)))
        params = jax.tree.leaves(pure_params(model))
        if step % 5 == 0:  # the model now holds the average (additive update: within an ulp)
            for p, a in zip(params, ema, strict=True):
                np.testing.assert_allclose(p, a, rtol=2e-7, atol=1e-8)
        elif step > 1:
            assert any(not np.allclose(p, a) for p, a in zip(params, ema, strict=True))


class LinenMLP(nn.Module):  # type: ignore[misc]
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(OUT)(jnp.tanh(nn.Dense(HIDDEN)(x)))


def test_linen_train_state_with_a_donated_jitted_step() -> None:
    x, y = teacher_data()
    model = LinenMLP()
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=model.init(jax.random.key(0), x),
        tx=adamx.adam(use_ema=True, **FEATURES),
    )

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: mse(state.apply_fn(p, x), y))(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(200):
        previous = state
        state, loss = train_step(state, x, y)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])
    # Donation took effect: the previous state's buffers were reused for the new one.
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous.params))
    assert int(state.step) == int(adamx.iterations(state.opt_state)) == 200
    ema_loss = float(mse(model.apply(adamx.ema_params(state.opt_state), x), y))
    assert ema_loss < losses[0] / 10


@pytest.mark.parametrize("name", list(CONTRACT_CONFIGS))
def test_nnx_optimizer_trains_every_configuration(name: str) -> None:
    """Flax's own optimizer test, for each configuration of the optax contract suite: the
    loss falls, the step counter is Keras's `iterations`, the model's dtypes stay float32."""
    x, y = teacher_data()
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, CONTRACT_CONFIGS[name](0.02), wrt=nnx.Param)

    @nnx.jit
    def step(model: Any, optimizer: Any) -> jax.Array:
        def scaled_loss(model: Any) -> jax.Array:
            return adamx.scale_loss(nnx_loss(model, x, y), optimizer.opt_state)

        grads = nnx.grad(scaled_loss)(model)
        optimizer.update(model, grads)
        return nnx_loss(model, x, y)

    first = float(nnx_loss(model, x, y))
    losses = [float(step(model, optimizer)) for _ in range(100)]
    assert losses[-1] < first / 5, (first, losses[-1])
    calls_per_update = 2 if name == "accumulation" else 1
    assert int(adamx.iterations(optimizer.opt_state)[...]) == 100 // calls_per_update
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(pure_params(model)))
