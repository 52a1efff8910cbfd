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
