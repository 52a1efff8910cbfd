"""State accessors: Keras's counters and learning rate, jit-safe, through every wrapper."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx


def _calls(tx: optax.GradientTransformation, grads: list[Any]) -> list[Any]:
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    states = []

    @jax.jit
    def step(state: Any, g: Any) -> tuple[Any, jax.Array, jax.Array]:
        _, state = tx.update(g, state, params)
        # The accessors work inside jit, on traced state.
        return state, adamx.iterations(state), adamx.current_learning_rate(state)

    for g in grads:
        state, count, rate = step(state, g)
        states.append((int(count), float(rate)))
    return states


def test_iterations_count_real_updates() -> None:
    ones = [{"w": jnp.ones(2)}] * 6
    assert [c for c, _ in _calls(adamx.adam(), ones)] == [1, 2, 3, 4, 5, 6]
    accumulated = _calls(adamx.adam(gradient_accumulation_steps=3), ones)
    assert [c for c, _ in accumulated] == [0, 0, 1, 1, 1, 2]


def test_skipped_loss_scale_steps_do_not_count() -> None:
    grads = [{"w": jnp.ones(2)}, {"w": jnp.array([jnp.inf, 1.0])}, {"w": jnp.ones(2)}]
    tx = adamx.loss_scale_optimizer(adamx.adam(optax.exponential_decay(0.1, 1, 0.5)))
    counts_and_rates = _calls(tx, grads)
    assert [c for c, _ in counts_and_rates] == [1, 1, 2]
    np.testing.assert_allclose([r for _, r in counts_and_rates], [0.05, 0.05, 0.025], rtol=1e-6)


def test_accessors_need_an_adam_state() -> None:
    state = optax.sgd(0.1).init(jnp.zeros(2))
    with pytest.raises(ValueError, match="holds no adamx Adam state"):
        adamx.iterations(state)
    with pytest.raises(ValueError, match="holds no adamx Adam state"):
        adamx.current_learning_rate(state)


def test_name_scopes_the_update_in_the_lowered_program() -> None:
    tx = adamx.adam(name="my_optimizer")
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    text = jax.jit(tx.update).lower(params, state, params).as_text(debug_info=True)
    assert "my_optimizer" in text


CONFIGS = {
    "weight decay": {"weight_decay": 0.1},
    "EMA": {"use_ema": True},
    "all": {"weight_decay": 0.1, "use_ema": True, "gradient_accumulation_steps": 2},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_optax_tree_get_finds_one_count_keras_iterations(name: str) -> None:
    tx = adamx.adam(0.1, **CONFIGS[name])
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(4):
        _, state = tx.update({"w": jnp.ones(3)}, state, params)
    assert int(optax.tree.get(state, "count")) == int(adamx.iterations(state)) > 0


def test_setting_the_learning_rate_through_a_plain_state_raises() -> None:
    """Only a rate the update reads may be set: a plain state holds none under that name."""
    tx = adamx.adam(0.1)
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(KeyError, match="learning_rate"):
        optax.tree.set(state, learning_rate=0.0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_injected_learning_rate_is_the_one_tree_get_and_set_see(name: str) -> None:
    tx = optax.inject_hyperparams(adamx.adam, static_args=("gradient_accumulation_steps",))(
        learning_rate=0.1, **CONFIGS[name]
    )
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    assert float(optax.tree.get(state, "learning_rate")) == pytest.approx(0.1)
    state = optax.tree.set(state, learning_rate=0.0)
    for _ in range(2):  # a real update also with accumulation
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["w"], np.ones(3))  # lr 0, and decay * lr 0
    assert float(adamx.current_learning_rate(state)) == 0.0
