"""Static `loss_scale_factor` and dynamic `loss_scale_optimizer` against Keras."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from harness import (
    assert_bit_equal,
    assert_close_to_keras,
    check_against_keras,
    random_grads,
    random_params,
    run_keras,
)

import adamx
from adamx._state import find_state


# With a norm clip and a power-of-two factor, the clip unscales the gradients itself.
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("clip", [{}, {"global_clipnorm": 0.05}, {"clipnorm": 0.05}])
@pytest.mark.parametrize("factor", [128.0, 3.0])
def test_static_factor_matches_keras(factor: float, clip: dict[str, float], jit: bool) -> None:
    params = random_params(4)
    grads = random_grads(4, 200 if jit else 12, params, scale=factor)
    check_against_keras(
        {"learning_rate": 0.01, "loss_scale_factor": factor, **clip}, params, grads, jit=jit
    )


def test_scale_loss_reads_the_state() -> None:
    params = jnp.zeros(2)
    assert float(adamx.scale_loss(2.0, adamx.adam(loss_scale_factor=4.0).init(params))) == 8.0
    assert float(adamx.scale_loss(2.0, adamx.adam().init(params))) == 2.0
    dynamic = adamx.loss_scale_optimizer(adamx.adam(), initial_scale=16.0).init(params)
    assert float(adamx.scale_loss(2.0, dynamic)) == 32.0
    scaled = adamx.scale_loss(jnp.asarray(2.0, jnp.bfloat16), dynamic)
    assert scaled.dtype == jnp.float32  # Keras multiplies by a float32 scale too


def _inject_non_finite(grads: list[Any], calls: dict[int, float]) -> list[Any]:
    grads = [jax.tree.map(np.array, g) for g in grads]
    for call, value in calls.items():
        grads[call]["dense"]["kernel"][0, 1] = value
    return grads


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize(
    "inner",
    [
        {"learning_rate": 0.01},
        {
            "learning_rate": 0.01,
            "gradient_accumulation_steps": 2,
            "use_ema": True,
            "weight_decay": 0.01,
            "clipnorm": 0.5,
        },
        {"learning_rate": 0.01, "global_clipnorm": 0.05, "use_ema": True},
        {"learning_rate": 0.01, "clipnorm": 0.05, "weight_decay": 0.01},
    ],
    ids=["plain", "accumulation+ema+decay+clipnorm", "global_clipnorm+ema", "clipnorm+decay"],
)
def test_dynamic_scaling_matches_keras_loss_scale_optimizer(
    inner: dict[str, Any], jit: bool
) -> None:
    params = random_params(5)
    steps = 60 if jit else 16
    grads = random_grads(5, steps, params, scale=8.0)
    grads = _inject_non_finite(grads, {1: np.inf, 2: np.nan, 3: -np.inf, 9: np.nan, 13: np.inf})
    tx = adamx.loss_scale_optimizer(adamx.adam(**inner), initial_scale=8.0, dynamic_growth_steps=3)
    lso = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(**inner), initial_scale=8.0, dynamic_growth_steps=3
    )
    theirs = run_keras(lso, params, grads, jit=jit, record="dynamic_scale")

    scales = []
    with contextlib.nullcontext() if jit else jax.disable_jit():
        state = tx.init(params)
        update = jax.jit(tx.update) if jit else tx.update
        ours = params
        for g in grads:
            updates, state = update(g, state, ours)
            ours = optax.apply_updates(ours, updates)
            scales.append(float(state.loss_scale))
    np.testing.assert_array_equal(scales, [float(s) for s in theirs.history])
    inner_iterations = theirs.scalar(lso.inner_optimizer._iterations)
    expected_updates = inner_iterations // inner.get("gradient_accumulation_steps", 1)
    assert int(adamx.iterations(state)) == expected_updates
    if jit:
        assert_close_to_keras(ours, theirs.params, params)
    else:
        assert_bit_equal(ours, theirs.params)


def test_skipped_step_leaves_everything_bit_identical() -> None:
    tx = adamx.loss_scale_optimizer(
        adamx.adam(0.1, use_ema=True, gradient_accumulation_steps=2, weight_decay=0.1), 4.0
    )
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = tx.init(params)
    for g in ([0.3, 0.2, 0.1], [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]):
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        params = optax.apply_updates(params, updates)
    updates, skipped = jax.jit(tx.update)({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    for before, after in zip(
        jax.tree.leaves(state.inner_state), jax.tree.leaves(skipped.inner_state), strict=True
    ):
        assert bool(jnp.all(before == after))
    assert float(skipped.loss_scale) == 2.0 and int(skipped.growth_count) == 0


def test_scale_has_no_floor_like_keras() -> None:
    # Keras halves without a floor; on XLA:CPU float32 subnormals flush to zero, so from 2**15
    # the scale is 2**-126 after 141 non-finite calls and 0 after 142 (Keras gives the same).
    params = {"w": np.zeros(1, np.float32)}
    grads = [{"w": np.array([np.inf], np.float32)}] * 145
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    theirs = run_keras(lso, params, grads, record="dynamic_scale").history
    tx = adamx.loss_scale_optimizer(adamx.adam())
    state = tx.init(params)
    update = jax.jit(tx.update)
    ours = []
    for g in grads:
        _, state = update(g, state, params)
        ours.append(float(state.loss_scale))
    np.testing.assert_array_equal(ours, [float(s) for s in theirs])
    assert ours[-1] == 0.0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_scale_stays_float32_with_low_precision(dtype: Any) -> None:
    tx = adamx.loss_scale_optimizer(adamx.adam(0.01), initial_scale=2.0**15, dynamic_growth_steps=1)
    params = {"w": jnp.ones(3, dtype)}
    state = tx.init(params)
    for _ in range(3):  # 2**16 and beyond overflow float16, not the float32 scale
        updates, state = jax.jit(tx.update)({"w": jnp.full(3, 0.5, dtype)}, state, params)
        params = optax.apply_updates(params, updates)
    assert state.loss_scale.dtype == jnp.float32 and float(state.loss_scale) == 2.0**18
    assert params["w"].dtype == dtype and bool(jnp.all(params["w"] < 1))


def test_accumulator_holds_unscaled_gradients() -> None:
    # The spec: g = [12, 16] with loss_scale_factor 4 leaves acc = [3, 4] after a micro-step.
    tx = adamx.adam(loss_scale_factor=4.0, gradient_accumulation_steps=2, clipnorm=1.0)
    params = jnp.zeros(2)
    _, state = tx.update(jnp.array([12.0, 16.0]), tx.init(params), params)
    accumulation = find_state(state, adamx.AccumulateGradientsState)
    assert accumulation is not None
    np.testing.assert_array_equal(accumulation.acc_grads, [3.0, 4.0])


def test_static_factor_inside_dynamic_scaling_is_an_error() -> None:
    tx = adamx.loss_scale_optimizer(adamx.adam(loss_scale_factor=4.0))
    with pytest.raises(ValueError, match="static `loss_scale_factor`"):
        tx.init(jnp.zeros(2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_scale": 0.0}, "initial_scale"),
        ({"dynamic_growth_steps": 0}, "dynamic_growth_steps"),
        ({"dynamic_growth_steps": 2.0}, "dynamic_growth_steps"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        adamx.loss_scale_optimizer(adamx.adam(), **kwargs)


def test_an_inner_static_factor_is_refused_where_keras_drops_it() -> None:
    """Keras's `LossScaleOptimizer` sets the inner `loss_scale_factor` to None (its own test
    `test_finite_step_with_inner_loss_scale` relies on it); unscaling twice would be wrong, and
    dropping it silent, so adamx refuses it at `init` (docs/reliability.md, a deliberate
    difference)."""
    tx = adamx.loss_scale_optimizer(adamx.adam(loss_scale_factor=4.0))
    with pytest.raises(ValueError, match="static `loss_scale_factor`"):
        tx.init({"w": jnp.ones(2)})
