"""Decoupled weight decay: Keras's order of operations; exclusion by pattern, mask, callable."""

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
    random_grads,
    random_params,
    run_adamx,
    run_keras,
)

import adamx

TREE = {
    "encoder": {"block_0": {"scale": 1.0, "kernel": 1.0}, "block_1": {"scale": 1.0, "kernel": 1.0}},
    "dense": {"kernel": 1.0, "bias": 1.0},
    "head": 1.0,
}


@pytest.mark.parametrize(
    ("exclude", "decayed"),
    [
        (None, None),  # everything
        (
            ["bias"],
            [
                "dense/kernel",
                "encoder/block_0/kernel",
                "encoder/block_0/scale",
                "encoder/block_1/kernel",
                "encoder/block_1/scale",
                "head",
            ],
        ),
        ("bias", None),  # one pattern, as a string: same as ["bias"]
        (["^k"], ["dense/bias", "encoder/block_0/scale", "encoder/block_1/scale", "head"]),
        (
            ["encoder/.*/scale"],
            [
                "dense/bias",
                "dense/kernel",
                "encoder/block_0/kernel",
                "encoder/block_1/kernel",
                "head",
            ],
        ),
        (
            ["b.as", "head$"],
            [
                "dense/kernel",
                "encoder/block_0/kernel",
                "encoder/block_0/scale",
                "encoder/block_1/kernel",
                "encoder/block_1/scale",
            ],
        ),
        (
            {"encoder": True, "dense": {"kernel": False, "bias": True}, "head": False},
            ["dense/kernel", "head"],
        ),  # a prefix mask, True = excluded
        (lambda p: jax.tree.map(lambda x: x < 0.5, p), None),  # a callable returning a mask
    ],
)
def test_decayed_paths(exclude: Any, decayed: list[str] | None) -> None:
    paths = adamx.decayed_paths(TREE, exclude)
    everything = adamx.decayed_paths(TREE)
    if decayed is None:
        expected = [p for p in everything if not (exclude == "bias" and p.endswith("bias"))]
    else:
        expected = decayed
    assert paths == expected


def test_keras_short_name_patterns_agree_with_keras() -> None:
    """Keras searches the short variable name; every such pattern keeps its meaning."""
    params = random_params(0)
    for pattern in ["bias", "^k", "b.as", "ern", "^scale$", "embedding|bias"]:
        optimizer = keras.optimizers.Adam(weight_decay=0.1)
        optimizer.exclude_from_weight_decay(var_names=[pattern])
        variables = [
            keras.Variable(np.asarray(x), name=n)
            for x, n in zip(
                jax.tree.leaves(params), ["bias", "kernel", "embedding", "scale"], strict=True
            )
        ]
        keras_decayed = [v.name for v in variables if optimizer._use_weight_decay(v)]
        ours = [p.split("/")[-1] for p in adamx.decayed_paths(params, [pattern])]
        assert ours == keras_decayed, pattern


def test_decay_is_applied_before_the_step_with_the_same_rate() -> None:
    # p = 2, wd = 0.1, lr = 0.5, step u = -1: Keras computes (2 - 2*0.1*0.5) - 1 = 0.9.
    tx = adamx.decoupled_weight_decay(0.1, learning_rate=0.5)
    params = jnp.array([2.0, -4.0])
    updates, _ = tx.update(jnp.array([-1.0, 0.5]), tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates), [0.9, -3.3], rtol=1e-6)


def test_decay_then_step_is_bit_identical_to_keras(params: Any) -> None:
    # Exact while each move is small relative to |p| (then p + (p_new - p) == p_new); a large
    # relative move near p = 0 can be off by one ulp, the documented limit of additive updates.
    grads = random_grads(5, 30, params)
    ours, _ = run_adamx(adamx.adam(0.01, weight_decay=0.3), params, grads, jit=False)
    theirs = run_keras(keras.optimizers.Adam(0.01, weight_decay=0.3), params, grads, jit=False)
    assert_bit_equal(ours, theirs.params)


def test_weight_decay_zero_still_runs_the_expression_like_keras() -> None:
    params = {"w": jnp.array([np.inf, 1.0])}
    tx = adamx.adam(weight_decay=0.0)
    updates, _ = tx.update({"w": jnp.array([1.0, 1.0])}, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.isnan(new["w"][0])  # inf - inf * 0 * lr = nan, as in Keras


def test_exclusion_with_keras_oracle_over_a_schedule(params: Any) -> None:
    grads = random_grads(6, 40, params)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.05, 30, 0.001)
    ours, _ = run_adamx(
        adamx.adam(schedule, weight_decay=0.2, exclude_from_weight_decay=["embedding"]),
        params,
        grads,
    )
    theirs = run_keras(
        keras.optimizers.Adam(schedule, weight_decay=0.2),
        params,
        grads,
        exclude_names=["embedding"],
    )
    assert_close_to_keras(ours, theirs.params, params)


@pytest.mark.parametrize(
    ("exclude", "error", "message"),
    [
        ({"dense": True}, ValueError, "exclude_from_weight_decay"),
        (lambda p: jax.tree.map(lambda x: jnp.asarray(x) > 0, p), TypeError, "booleans"),
    ],
)
def test_bad_masks_raise_clearly(exclude: Any, error: type[Exception], message: str) -> None:
    tx = adamx.adam(weight_decay=0.1, exclude_from_weight_decay=exclude)
    params = {"w": jnp.ones(2), "b": jnp.ones(1)}
    with pytest.raises(error, match=message):
        state = tx.init(params)
        jax.jit(tx.update)(params, state, params)


def test_needs_params() -> None:
    tx = adamx.decoupled_weight_decay(0.1)
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_variable_wrappers_are_named_like_their_parameter() -> None:
    """Flax NNX states end each path in a `.value` attribute: `hidden/bias/value`. Patterns,
    anchored Keras short names included, see `hidden/bias` (checked with a stand-in wrapper)."""

    @jax.tree_util.register_pytree_with_keys_class
    class Wrapper:
        def __init__(self, value: Any) -> None:
            self.value = value

        def tree_flatten_with_keys(self) -> Any:
            return ((jax.tree_util.GetAttrKey("value"), self.value),), None

        @classmethod
        def tree_unflatten(cls, aux: Any, children: Any) -> Wrapper:
            return cls(*children)

    params = {"hidden": {"bias": Wrapper(jnp.zeros(2)), "kernel": Wrapper(jnp.ones((2, 2)))}}
    assert adamx.decayed_paths(params, ["^b"]) == ["hidden/kernel"]
    assert adamx.decayed_paths(params) == ["hidden/bias", "hidden/kernel"]
