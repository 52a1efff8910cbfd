"""EMA of the parameters: Keras's first-step rule, overwrite, finalize and evaluation helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from harness import (
    assert_bit_equal,
    assert_close_to_reference,
    check_against_keras,
    random_grads,
    random_params,
    run_adamx,
)

import adamx

CASES = {
    "no_overwrite": {"use_ema": True},
    "momentum_0.9": {"use_ema": True, "ema_momentum": 0.9},
    "overwrite_1": {"use_ema": True, "ema_overwrite_frequency": 1},
    "overwrite_2": {"use_ema": True, "ema_overwrite_frequency": 2, "ema_momentum": 0.9},
    "overwrite_5": {"use_ema": True, "ema_overwrite_frequency": 5, "learning_rate": 0.01},
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras_over_200_jitted_steps(name: str) -> None:
    params = random_params(1)
    check_against_keras(CASES[name], params, random_grads(1, 200, params))


@pytest.mark.parametrize("name", list(CASES))
def test_bit_identical_to_keras_op_by_op(name: str) -> None:
    params = random_params(2)
    check_against_keras(CASES[name], params, random_grads(2, 11, params), jit=False)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name: str) -> None:
    kwargs = CASES[name]
    params = random_params(3)
    grads = random_grads(3, 60, params)
    ours, state = run_adamx(adamx.adam(**kwargs), params, grads)
    expected = reference.run(
        reference.Config(**kwargs), jax.tree.leaves(params), [jax.tree.leaves(g) for g in grads]
    )
    assert_close_to_reference(ours, expected.params)
    assert expected.average is not None
    assert_close_to_reference(adamx.ema_params(state), expected.average)


def test_first_update_copies_and_micro_steps_mix_in_old_params() -> None:
    # The spec's worked example: N = 3, momentum 0.5, p moves to -0.1 on call 3 and to -0.2 on
    # call 6; the averages after calls 4, 5, 6, 7 are -0.1, -0.1, -0.15, -0.175.
    tx = adamx.ema_of_params(0.5, steps_per_update=3)
    params = jnp.zeros(1)
    state = tx.init(params)
    moves = [0.0, 0.0, -0.1, 0.0, 0.0, -0.1, 0.0]
    averages = []
    for move in moves:
        updates, state = tx.update(jnp.array([move]), state, params)
        params = optax.apply_updates(params, updates)
        averages.append(float(adamx.ema_params(state)[0]))
    np.testing.assert_allclose(averages[3:], [-0.1, -0.1, -0.15, -0.175], rtol=1e-6)
    np.testing.assert_allclose(averages[:3], [0.0, 0.0, -0.1], rtol=1e-6)


def test_overwrite_emits_average_minus_params() -> None:
    tx = adamx.ema_of_params(0.5, ema_overwrite_frequency=2)
    params = jnp.array([1.0])
    state = tx.init(params)
    _, state = tx.update(jnp.array([1.0]), state, params)  # call 1: average = 2, no overwrite
    params = jnp.array([2.0])
    updates, state = tx.update(jnp.array([2.0]), state, params)  # call 2: avg = 0.5*2 + 0.5*4
    np.testing.assert_allclose(optax.apply_updates(params, updates), [3.0])


def test_finalize_and_evaluation_helpers() -> None:
    params = {"w": jnp.array([1.0, 2.0])}
    grads = [{"w": jnp.array([0.5, -0.5])}] * 3
    final, state = run_adamx(adamx.adam(0.1, use_ema=True, ema_momentum=0.5), params, grads)
    average = adamx.ema_params(state)
    assert not np.array_equal(average["w"], final["w"])
    assert_bit_equal(adamx.finalize_variable_values(final, state), average)
    plain_final, plain_state = run_adamx(adamx.adam(0.1), params, grads)
    assert adamx.finalize_variable_values(plain_final, plain_state) is plain_final
    with pytest.raises(ValueError, match="use_ema=True"):
        adamx.ema_params(plain_state)
    with pytest.raises(ValueError, match="structure"):
        adamx.finalize_variable_values({"other": jnp.zeros(2)}, state)


def test_non_finite_average_does_not_leak_between_overwrites() -> None:
    tx = adamx.ema_of_params(0.5, ema_overwrite_frequency=3)
    params = jnp.array([1.0])
    state = tx.init(params)._replace(average=jnp.array([jnp.nan]))
    updates, _ = tx.update(jnp.array([0.0]), state, params)  # call 1 of 3: no overwrite due
    assert np.isfinite(optax.apply_updates(params, updates)).all()  # Keras would give NaN
