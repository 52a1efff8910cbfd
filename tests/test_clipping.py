"""The clipping transformations against Keras's own clipping code, edge cases included."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from harness import assert_bit_equal

import adamx

INF, NAN = np.inf, np.nan

GRADIENT_TREES = {
    "below": {"a": np.array([0.01, -0.02], np.float32), "b": np.array(0.03, np.float32)},
    "above": {"a": np.array([3.0, -4.0], np.float32), "b": np.array(12.0, np.float32)},
    "zeros": {"a": np.zeros(2, np.float32), "b": np.array(0.0, np.float32)},
    "inf": {"a": np.array([INF, 1.0], np.float32), "b": np.array(2.0, np.float32)},
    "nan": {"a": np.array([NAN, 1.0], np.float32), "b": np.array(2.0, np.float32)},
    "zero_size": {"a": np.zeros((0, 3), np.float32), "b": np.array(5.0, np.float32)},
    "random": {
        "a": np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32),
        "b": np.random.default_rng(1).normal(size=(3,)).astype(np.float32),
    },
}

MODES = {
    "clipnorm": adamx.clip_by_norm,
    "clipvalue": adamx.clip_by_value,
    "global_clipnorm": adamx.clip_by_global_norm,
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("threshold", [1.0, 0.5, 0.0959])  # c * fl(1/c) != 1 for 0.0959
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(GRADIENT_TREES))
def test_clipping_is_bit_identical_to_keras(
    case: str, mode: str, threshold: float, jit: bool
) -> None:
    grads = GRADIENT_TREES[case]
    tx = MODES[mode](threshold)

    def ours_fn(g: Any) -> Any:
        return tx.update(g, tx.init(g))[0]

    def theirs_fn(g: Any) -> Any:
        optimizer = keras.optimizers.Adam(**{mode: threshold})
        return jax.tree.unflatten(
            jax.tree.structure(g), optimizer._clip_gradients(jax.tree.leaves(g))
        )

    context = contextlib.nullcontext() if jit else jax.disable_jit()
    with context:
        ours = (jax.jit(ours_fn) if jit else ours_fn)(grads)
        theirs = (jax.jit(theirs_fn) if jit else theirs_fn)(grads)
    assert_bit_equal(ours, theirs)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("loss_scale", [8.0, 2.0**-3])
@pytest.mark.parametrize("mode", ["clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("case", list(GRADIENT_TREES))
def test_clipping_scaled_gradients_equals_clipping_unscaled_ones_in_keras(
    case: str, mode: str, loss_scale: float, jit: bool
) -> None:
    """The `loss_scale` argument (adamx._loss_scale): the clip is handed `g * S` and S, and
    returns what Keras's clip returns for `g`, bit for bit, S traced under jit."""
    grads = GRADIENT_TREES[case]
    scaled = jax.tree.map(lambda g: g * np.float32(loss_scale), grads)
    tx = MODES[mode](0.5)

    def ours_fn(g: Any, scale: Any) -> Any:
        return tx.update(g, tx.init(g), loss_scale=scale)[0]

    def theirs_fn(g: Any) -> Any:
        optimizer = keras.optimizers.Adam(**{mode: 0.5})
        return jax.tree.unflatten(
            jax.tree.structure(g), optimizer._clip_gradients(jax.tree.leaves(g))
        )

    with contextlib.nullcontext() if jit else jax.disable_jit():
        ours = (jax.jit(ours_fn) if jit else ours_fn)(scaled, jnp.float32(loss_scale))
        theirs = (jax.jit(theirs_fn) if jit else theirs_fn)(grads)
    assert_bit_equal(ours, theirs)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_scaled_low_precision_gradients_are_unscaled_in_float32(dtype: Any) -> None:
    # Keras's LossScaleOptimizer unscales with a float32 scale: float16 gradients come out
    # float32, where their small values survive.
    g = {"a": jnp.asarray([3e-4 * 1024, 4e-4 * 1024], dtype)}
    tx = adamx.clip_by_global_norm(1.0)
    out = tx.update(g, tx.init(g), loss_scale=jnp.float32(1024.0))[0]["a"]
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(g["a"], np.float32) / 1024.0)


def test_global_norm_is_global_and_nonfinite_poisons_everything() -> None:
    tx = adamx.clip_by_global_norm(1.0)
    out, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.6, 0.8], rtol=1e-7)
    out, _ = tx.update({"a": jnp.array([INF]), "b": jnp.array([4.0])}, tx.init(None))
    assert np.isnan(out["a"]).all() and np.isnan(out["b"]).all()
    optax_out, _ = optax.clip_by_global_norm(1.0).update(
        {"a": jnp.array([INF]), "b": jnp.array([4.0])}, None
    )
    assert not np.isnan(optax_out["b"]).all()  # the documented difference from optax


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_norms_do_not_overflow(dtype: Any) -> None:
    # Keras: [300, 300] in float16 with clipnorm=1 overflows to inf and gives [0, 0].
    g = jnp.array([300.0, 300.0], dtype)
    for tx in (adamx.clip_by_norm(1.0), adamx.clip_by_global_norm(1.0)):
        out, _ = tx.update(g, tx.init(None))
        assert out.dtype == dtype
        np.testing.assert_allclose(np.asarray(out, np.float32), [2**-0.5, 2**-0.5], rtol=1e-2)


def test_empty_tree_passes_through() -> None:
    for make in MODES.values():
        tx = make(1.0)
        assert tx.update({}, tx.init({}))[0] == {}
