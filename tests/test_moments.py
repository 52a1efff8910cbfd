"""`scale_by_keras_adam`: Nesterov, amsgrad semantics, mu_dtype and low-precision parameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
import reference
from harness import (
    assert_bit_equal,
    assert_close_to_keras,
    assert_close_to_reference,
    max_abs_diff,
    random_grads,
    random_params,
    run_adamx,
    run_keras,
)

import adamx
from adamx._state import find_state


def _leaves64(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("learning_rate", [1e-3, 1e-2])
def test_nesterov_matches_optax_nesterov_adam(
    params: Any, grads: list[Any], learning_rate: float
) -> None:
    # With a negligible epsilon, epsilon-hat and optax's epsilon coincide; what remains is two
    # float32 evaluation orders of the same formula, held to the Keras tolerance.
    ours, _ = run_adamx(adamx.adam(learning_rate, epsilon=1e-12, nesterov=True), params, grads)
    theirs, _ = run_adamx(optax.adam(learning_rate, eps=1e-12, nesterov=True), params, grads)
    assert_close_to_keras(ours, theirs, params)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_nesterov_matches_float64_reference(params: Any, grads: list[Any], amsgrad: bool) -> None:
    ours, _ = run_adamx(
        adamx.adam(0.01, nesterov=True, amsgrad=amsgrad, epsilon=1e-4), params, grads
    )
    config = reference.Config(learning_rate=0.01, nesterov=True, amsgrad=amsgrad, epsilon=1e-4)
    expected = reference.run(config, _leaves64(params), [_leaves64(g) for g in grads])
    assert_close_to_reference(ours, expected.params)


def test_amsgrad_maxes_the_raw_second_moment() -> None:
    # A large gradient then small ones: v_hat must stay at the raw maximum of v.
    tx = adamx.scale_by_keras_adam(amsgrad=True)
    params = jnp.zeros(1)
    state = tx.init(params)
    for g in [10.0, 0.1, 0.1]:
        _, state = tx.update(jnp.array([g]), state)
    v1 = 0.001 * 100.0  # v after step 1: (1 - beta_2) * g**2
    np.testing.assert_allclose(state.nu_max, [v1], rtol=1e-6)
    assert float(state.nu[0]) < v1


def test_standalone_transform_composes_like_optax_scale_by_adam(
    params: Any, grads: list[Any]
) -> None:
    chained = optax.chain(adamx.scale_by_keras_adam(), optax.scale_by_learning_rate(0.01))
    ours, _ = run_adamx(chained, params, grads)
    expected, _ = run_adamx(adamx.adam(0.01), params, grads)
    # lr multiplies after alpha here instead of inside it: the same math, other rounding.
    assert_close_to_keras(ours, expected, params)


def test_keras_folds_the_learning_rate_into_alpha(params: Any, grads: list[Any]) -> None:
    inside = optax.chain(adamx.scale_by_keras_adam(learning_rate=0.01), optax.scale(-1.0))
    ours, _ = run_adamx(inside, params, grads, jit=False)
    theirs = run_keras(keras.optimizers.Adam(0.01), params, grads[: len(grads)], jit=False)
    assert_bit_equal(ours, theirs.params)


@pytest.mark.parametrize("beta", [np.float64(0.8), np.float32(0.8), jnp.asarray(0.8)])
def test_beta_as_numpy_or_array(params: Any, beta: Any) -> None:
    grads = random_grads(0, 20, params)
    ours, _ = run_adamx(adamx.adam(beta_1=beta), params, grads)
    theirs = run_keras(keras.optimizers.Adam(beta_1=beta), params, grads)
    assert_close_to_keras(ours, theirs.params, params)


@pytest.mark.parametrize(
    ("param_dtype", "mu_dtype"),
    [(jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.float32), (jnp.float32, None)],
)
def test_mu_dtype_sets_the_first_moment_dtype(param_dtype: Any, mu_dtype: Any) -> None:
    params = {"w": jnp.ones(4, param_dtype)}
    tx = adamx.adam(mu_dtype=mu_dtype)
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.full(4, 0.5, param_dtype)}, state, params)
    adam_state = find_state(state, adamx.ScaleByKerasAdamState)
    assert adam_state.mu["w"].dtype == (mu_dtype or param_dtype)
    assert adam_state.nu["w"].dtype == param_dtype
    assert updates["w"].dtype == param_dtype


def test_mu_dtype_bfloat16_still_tracks_the_reference(params: Any, grads: list[Any]) -> None:
    ours, _ = run_adamx(adamx.adam(0.01, mu_dtype=jnp.bfloat16), params, grads)
    expected = reference.run(
        reference.Config(learning_rate=0.01), _leaves64(params), [_leaves64(g) for g in grads]
    )
    movement = max_abs_diff(expected.params, jax.tree.leaves(params))
    # bfloat16 moments carry 8 bits: allow 2% of the movement, far below a wrong update.
    assert max_abs_diff(ours, expected.params) < 0.02 * movement


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_parameters_train_with_default_betas(dtype: Any) -> None:
    """Keras computes in the parameter dtype: in bfloat16, beta_2 = 0.999 rounds to 1 and
    parameters never move. adamx keeps the hyper-parameter arithmetic in float32."""
    params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), random_params(0))
    grads = [
        jax.tree.map(lambda x: np.asarray(x).astype(dtype), g) for g in random_grads(0, 20, params)
    ]
    ours, _ = run_adamx(adamx.adam(0.05), params, grads)
    assert all(x.dtype == dtype for x in jax.tree.leaves(ours))
    expected = reference.run(
        reference.Config(learning_rate=0.05), _leaves64(params), [_leaves64(g) for g in grads]
    )
    movement = max_abs_diff(expected.params, jax.tree.leaves(params))
    # Two units of the dtype's relative precision at the largest |p|: 20 steps of rounding.
    tolerance = (
        2 * float(jnp.finfo(dtype).eps) * max(float(np.max(np.abs(x))) for x in expected.params)
    )
    assert max_abs_diff(ours, expected.params) < tolerance < movement
    if dtype == jnp.bfloat16:
        keras_run = run_keras(keras.optimizers.Adam(0.05), params, grads)
        assert max_abs_diff(keras_run.params, params) == 0.0  # the Keras bug we do not copy


def test_bias_correction_is_finite_at_huge_counts() -> None:
    tx = adamx.scale_by_keras_adam()
    params = jnp.ones(3)
    state = tx.init(params)._replace(count=jnp.asarray(10**7, jnp.int32))
    updates, state = tx.update(jnp.array([1.0, -1.0, 0.0]), state)
    # beta**t underflows to 0: alpha = lr, m = 0.1 g, v = 0.001 g**2.
    expected = 0.1 * np.array([1.0, -1.0, 0.0]) / (np.sqrt(0.001) + 1e-7)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)
    assert int(state.count) == 10**7 + 1
