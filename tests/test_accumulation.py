"""Gradient accumulation: Keras's rule and counters, the lazy reset, and missing gradients."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
import reference
from harness import (
    KERAS_MOVEMENT_RTOL,
    assert_bit_equal,
    assert_close_to_reference,
    check_against_keras,
    max_abs_diff,
    random_grads,
    random_params,
    run_adamx,
    run_keras,
)

import adamx

schedules = keras.optimizers.schedules

CASES: dict[str, dict[str, Any]] = {
    "steps_2": {"gradient_accumulation_steps": 2},
    "steps_3": {"gradient_accumulation_steps": 3, "learning_rate": 0.01},
    "steps_3+amsgrad": {"gradient_accumulation_steps": 3, "amsgrad": True},
    "steps_4+clipnorm": {"gradient_accumulation_steps": 4, "clipnorm": 0.3, "learning_rate": 0.01},
    "everything": {
        "gradient_accumulation_steps": 3,
        "use_ema": True,
        "ema_overwrite_frequency": 2,
        "clipnorm": 0.5,
        "weight_decay": 0.01,
        "learning_rate": schedules.ExponentialDecay(0.01, 5, 0.5),
    },
    "everything_2": {
        "gradient_accumulation_steps": 2,
        "use_ema": True,
        "ema_momentum": 0.9,
        "ema_overwrite_frequency": 3,
        "global_clipnorm": 0.5,
        "weight_decay": 0.05,
        "amsgrad": True,
        "loss_scale_factor": 8.0,
        "learning_rate": schedules.PiecewiseConstantDecay([20, 60], [0.02, 0.01, 0.005]),
    },
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras_over_200_jitted_calls(name: str) -> None:
    kwargs = CASES[name]
    params = random_params(7)
    _, state, theirs = check_against_keras(kwargs, params, random_grads(7, 200, params))
    raw = int(theirs.scalar(theirs.optimizer._iterations))
    assert int(adamx.iterations(state)) == raw // kwargs["gradient_accumulation_steps"]


@pytest.mark.parametrize("name", list(CASES))
def test_bit_identical_to_keras_op_by_op(name: str) -> None:
    params = random_params(8)
    check_against_keras(CASES[name], params, random_grads(8, 13, params), jit=False)


def test_micro_batches_equal_one_large_batch() -> None:
    """k micro-batches with accumulation = one k-times-larger batch, for a mean loss."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4 * 32, 5)), rng.normal(size=(4 * 32,))
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=5), jnp.float32), "b": jnp.zeros([])}

    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

    def train(tx: optax.GradientTransformation, batches: list[tuple[Any, Any]]) -> Any:
        p, state = params, tx.init(params)
        for xb, yb in batches:
            updates, state = tx.update(jax.grad(loss)(p, xb, yb), state, p)
            p = optax.apply_updates(p, updates)
        return p

    epochs = 5
    micro = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)] * epochs
    accumulated = train(adamx.adam(0.05, gradient_accumulation_steps=4), micro)
    large = train(adamx.adam(0.05), [(x, y)] * epochs)
    movement = max_abs_diff(large, params)
    # Only the summation order of the mean differs: float32 rounding, far below a wrong step.
    assert max_abs_diff(accumulated, large) <= KERAS_MOVEMENT_RTOL * movement


FEATURES = {
    "clip": [{}, {"clipnorm": 0.4}, {"global_clipnorm": 0.6}],
    "decay": [{}, {"weight_decay": 0.02, "excluded": [True, False, False, False]}],
    "ema": [{}, {"use_ema": True, "ema_momentum": 0.8, "ema_overwrite_frequency": 2}],
    "scale": [{}, {"loss_scale_factor": 16.0}],
    "accumulation": [{}, {"gradient_accumulation_steps": 2}, {"gradient_accumulation_steps": 3}],
}


@pytest.mark.parametrize(
    "combination",
    [
        dict(kv for part in combo for kv in part.items())
        for combo in itertools.product(*FEATURES.values())
    ],
    ids=lambda c: "+".join(sorted(k for k in c if k != "excluded")) or "plain",
)
def test_every_feature_combination_matches_the_reference(combination: dict[str, Any]) -> None:
    params = random_params(9)
    grads = random_grads(9, 30, params)
    kwargs = {k: v for k, v in combination.items() if k != "excluded"}
    if "excluded" in combination:
        kwargs["exclude_from_weight_decay"] = ["bias"]
    ours, state = run_adamx(adamx.adam(0.01, amsgrad=True, **kwargs), params, grads)
    config = {k: v for k, v in combination.items()}
    expected = reference.run(
        reference.Config(learning_rate=0.01, amsgrad=True, **config),
        jax.tree.leaves(params),
        [jax.tree.leaves(g) for g in grads],
    )
    assert_close_to_reference(ours, expected.params)
    if combination.get("use_ema"):
        assert expected.average is not None
        assert_close_to_reference(adamx.ema_params(state), expected.average)
    steps = combination.get("gradient_accumulation_steps", 1)
    assert int(adamx.iterations(state)) == expected.iteration // steps


def test_non_finite_micro_step_waits_for_the_update_like_keras() -> None:
    params = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    ones = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    grads = [{"a": np.array([np.inf, 1.0], np.float32), "b": ones["b"]}, ones, ones, ones]
    kwargs = {"learning_rate": 0.1, "gradient_accumulation_steps": 3, "use_ema": True}
    for jit in (False, True):  # before the update, both leave the parameters exactly as they were
        ours, _ = run_adamx(adamx.adam(**kwargs), params, grads[:2], jit=jit)
        theirs = run_keras(keras.optimizers.Adam(**kwargs), params, grads[:2], jit=jit)
        assert_bit_equal(ours, params)
        assert_bit_equal(theirs.params, params)
    check_against_keras(kwargs, params, grads, jit=False)  # then nan where the inf was


def test_accumulation_changes_nothing_on_micro_steps() -> None:
    tx = adamx.adam(0.1, gradient_accumulation_steps=3, weight_decay=0.5, clipvalue=0.1)
    params = {"w": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    for call in range(1, 7):
        updates, state = tx.update({"w": jnp.array([1.0, 2.0])}, state, params)
        moved = bool(jnp.any(updates["w"] != 0))
        assert moved == (call % 3 == 0), call
        params = optax.apply_updates(params, updates)
