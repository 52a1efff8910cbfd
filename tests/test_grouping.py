"""Grouped parameters (`group_leaves`): round trips, Keras's numbers per element, refusals."""

from __future__ import annotations

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
    max_abs_diff,
    random_grads,
    random_params,
    run_adamx,
    run_keras,
)

import adamx

STEPS = 12
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "amsgrad": {"amsgrad": True, "learning_rate": 0.01},
    "decay_excluding_bias": {"weight_decay": 0.05, "exclude_from_weight_decay": ["bias"]},
    "clipvalue": {"clipvalue": 0.5},
    "ema_overwrite": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 3},
    "elementwise_features": {
        "learning_rate": 0.01,
        "weight_decay": 0.004,
        "exclude_from_weight_decay": ["bias", "scale"],
        "use_ema": True,
        "ema_overwrite_frequency": 4,
        "loss_scale_factor": 8.0,
        "gradient_accumulation_steps": 2,
    },
    "global_clipnorm": {"global_clipnorm": 0.5, "learning_rate": 0.01},
}
# Summed per buffer instead of per tensor, the global norm can differ in its last bits: measured
# 2.4e-6 of the movement (2 ulp of one parameter) over these steps; we allow 1e-5.
GLOBAL_NORM_RTOL = 1e-5


def grouped_run(
    kwargs: dict[str, Any], params: Any, grads: list[Any], jit: bool
) -> tuple[Any, Any]:
    exclude = kwargs.get("exclude_from_weight_decay")
    grouped_grads = [adamx.group_leaves(g, exclude) for g in grads]
    tx = adamx.adam(**kwargs)
    return run_adamx(tx, adamx.group_leaves(params, exclude), grouped_grads, jit=jit)


@pytest.mark.parametrize("kwargs", CONFIGS.values(), ids=CONFIGS.keys())
def test_grouped_matches_keras_and_per_leaf(kwargs: dict[str, Any], params: Any) -> None:
    """Jitted, within the Keras tolerance (XLA fuses a grouped step differently, so FMA
    contraction can move a last bit); op by op, bit for bit with the per-leaf run."""
    grads = random_grads(3, STEPS, params)
    jitted, _ = grouped_run(kwargs, params, grads, jit=True)
    exclude = kwargs.get("exclude_from_weight_decay")
    keras_kwargs = {k: v for k, v in kwargs.items() if k != "exclude_from_weight_decay"}
    optimizer = keras.optimizers.Adam(**keras_kwargs)
    theirs = run_keras(optimizer, params, grads, jit=True, exclude_names=exclude)
    assert_close_to_keras(jitted.ungroup(), theirs.params, params)

    grouped, grouped_state = grouped_run(kwargs, params, grads, jit=False)
    per_leaf, per_leaf_state = run_adamx(adamx.adam(**kwargs), params, grads, jit=False)
    if "global_clipnorm" in kwargs:
        movement = max_abs_diff(per_leaf, params)
        assert max_abs_diff(grouped.ungroup(), per_leaf) <= GLOBAL_NORM_RTOL * movement
    else:
        assert_bit_equal(grouped.ungroup(), per_leaf)
    if kwargs.get("use_ema"):
        assert_bit_equal(
            adamx.ema_params(grouped_state).ungroup(), adamx.ema_params(per_leaf_state)
        )
    assert adamx.iterations(grouped_state) == adamx.iterations(per_leaf_state)


def test_mixed_dtypes_get_a_buffer_each_and_keep_their_numbers() -> None:
    params = {
        "a": random_params(1, {"w": (4, 3)})["w"],
        "b": random_params(2, {"w": (5,)}, np.float16)["w"],
        "c": jnp.asarray(random_params(3, {"w": (2, 2)})["w"], jnp.bfloat16),
        "d": random_params(4, {"w": (3,)})["w"],
    }
    grouped = adamx.group_leaves(params)
    assert grouped.layout.groups == ("float32", "float16", "bfloat16")
    assert [b.dtype for b in grouped.buffers] == [jnp.float32, jnp.float16, jnp.bfloat16]
    assert_bit_equal(grouped.ungroup(), params)
    grads = random_grads(5, 6, params, scale=0.1)
    tx = adamx.adam(learning_rate=0.01, use_ema=True)
    ours, _ = run_adamx(tx, grouped, [adamx.group_leaves(g) for g in grads], jit=False)
    per_leaf, _ = run_adamx(tx, params, grads, jit=False)
    assert_bit_equal(ours.ungroup(), per_leaf)
    assert max_abs_diff(per_leaf, params) > 0


@pytest.mark.parametrize(
    "tree",
    [
        {"scalar": np.float32(1.5), "empty": np.zeros((0, 3), np.float32), "m": np.ones((2, 3))},
        [np.arange(6, dtype=np.float32).reshape(2, 3), (np.ones(1, np.float32),)],
        {"nested": {"deep": {"x": np.linspace(0, 1, 7, dtype=np.float32)}}},
    ],
    ids=["scalar_and_empty", "lists_and_tuples", "nested"],
)
def test_round_trip_restores_every_leaf(tree: Any) -> None:
    grouped = adamx.group_leaves(tree)
    restored = adamx.ungroup(grouped)
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    for got, expected in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
        assert got.shape == np.shape(expected)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected, got.dtype))
    flat, treedef = jax.tree.flatten(grouped)
    assert jax.tree.unflatten(treedef, flat).layout == grouped.layout


def test_training_through_ungroup_gives_grouped_gradients() -> None:
    """A 20-layer MLP differentiated through `ungroup()`: the gradients come grouped, and the
    run follows the per-leaf run."""
    rng = np.random.default_rng(0)
    params = {
        f"layer_{i:02d}": {
            "kernel": rng.normal(size=(8, 8)).astype(np.float32) * 0.3,
            "bias": np.zeros(8, np.float32),
        }
        for i in range(20)
    }
    x = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    y = jnp.sin(x)

    def loss(tree: Any) -> jax.Array:
        h = x
        for name in sorted(tree):
            h = jnp.tanh(h @ tree[name]["kernel"] + tree[name]["bias"])
        return jnp.mean((h - y) ** 2)

    tx = adamx.adam(0.01, weight_decay=0.004, exclude_from_weight_decay=["bias"])

    def train(start: Any, loss_of: Any) -> tuple[Any, list[float]]:
        @jax.jit
        def step(p: Any, state: Any) -> tuple[Any, Any, jax.Array]:
            value, g = jax.value_and_grad(loss_of)(p)
            updates, state = tx.update(g, state, p)
            return optax.apply_updates(p, updates), state, value

        p, state, losses = start, tx.init(start), []
        for _ in range(100):
            p, state, value = step(p, state)
            losses.append(float(value))
        return p, losses

    grouped, grouped_losses = train(
        adamx.group_leaves(params, ["bias"]), lambda g: loss(g.ungroup())
    )
    assert isinstance(grouped, adamx.GroupedParams)
    per_leaf, per_leaf_losses = train(params, loss)
    assert grouped_losses[-1] < 0.5 * grouped_losses[0]
    np.testing.assert_allclose(grouped_losses, per_leaf_losses, rtol=1e-4)
    assert max_abs_diff(grouped.ungroup(), per_leaf) <= 1e-4 * max_abs_diff(per_leaf, params)


def test_clipnorm_is_refused(params: Any) -> None:
    grouped = adamx.group_leaves(params)
    tx = adamx.adam(clipnorm=1.0)
    with pytest.raises(ValueError, match="`clipnorm` clips each tensor"):
        tx.update(grouped, tx.init(grouped), grouped)


def test_buffers_mixing_decayed_and_excluded_leaves_are_refused(params: Any) -> None:
    grouped = adamx.group_leaves(params)  # grouped without the exclusion
    tx = adamx.adam(weight_decay=0.1, exclude_from_weight_decay=["bias"])
    with pytest.raises(ValueError, match=r"'float32' mixes leaves .*dense/bias=False"):
        tx.init(grouped)


@pytest.mark.parametrize(
    ("tree", "error", "match"),
    [
        ({}, ValueError, "no leaves"),
        ({"w": np.ones(3, np.int32)}, TypeError, "'w' has dtype int32"),
    ],
    ids=["empty", "integer"],
)
def test_bad_trees_are_refused(tree: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        adamx.group_leaves(tree)


def test_ungroup_wants_grouped_params() -> None:
    with pytest.raises(TypeError, match="ungroup takes GroupedParams; received dict"):
        adamx.ungroup({"w": np.ones(2)})


BF16_MOMENTS = {"learning_rate": 0.01, "mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}


def test_grouped_bfloat16_moments_keep_the_per_leaf_numbers(params: Any) -> None:
    """Round to nearest: bit for bit with the per-leaf run, the moments stored in bfloat16."""
    grads = random_grads(3, STEPS, params)
    grouped, state = grouped_run(BF16_MOMENTS, params, grads, jit=False)
    per_leaf, _ = run_adamx(adamx.adam(**BF16_MOMENTS), params, grads, jit=False)
    assert_bit_equal(grouped.ungroup(), per_leaf)
    moments = [optax.tree.get(state, "mu"), optax.tree.get(state, "nu")]
    assert {leaf.dtype for leaf in jax.tree.leaves(moments)} == {jnp.dtype("bfloat16")}


def test_grouped_stochastic_rounding_stays_near_float32_state(params: Any) -> None:
    """Stochastic rounding draws its bits per buffer, so the numbers are not the per-leaf ones;
    they are deterministic and near the float32-state run."""
    grads = random_grads(3, STEPS, params)
    kwargs = {**BF16_MOMENTS, "rounding_seed": 7}
    grouped, _ = grouped_run(kwargs, params, grads, jit=True)
    again, _ = grouped_run(kwargs, params, grads, jit=True)
    assert_bit_equal(grouped.ungroup(), again.ungroup())
    exact, _ = run_adamx(adamx.adam(learning_rate=0.01), params, grads, jit=True)
    # Each step moves a parameter by at most about the learning rate, and a bfloat16 moment
    # is off by under one ulp (2**-7 relative, so m / sqrt(v) by under 1.2%): over 12 steps
    # at most 12 * 0.01 * 0.012 = 1.5e-3.
    assert 0 < max_abs_diff(grouped.ungroup(), exact) <= 1.5e-3
