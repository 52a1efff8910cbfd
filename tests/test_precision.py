"""Precision: every parameter dtype with every moment dtype, huge step counts, int32 limits.

(Training in bfloat16/float16 against the float64 reference is in `test_moments.py`.)
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx._state import find_state

PARAM_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
MU_DTYPES = [None, jnp.float32, jnp.bfloat16]
FEATURES = {
    "defaults": {},
    "everything": {
        "amsgrad": True,
        "weight_decay": 0.01,
        "global_clipnorm": 1.0,
        "use_ema": True,
        "ema_overwrite_frequency": 2,
        "loss_scale_factor": 8.0,
        "gradient_accumulation_steps": 2,
        "skip_nonfinite": True,
    },
}
COMBINATIONS = list(itertools.product(PARAM_DTYPES, MU_DTYPES, FEATURES))


def _name(dtype: Any) -> str:
    return "default" if dtype is None else jnp.dtype(dtype).name


@pytest.mark.parametrize(
    ("dtype", "mu_dtype", "features"),
    COMBINATIONS,
    ids=[f"{_name(d)}-mu_{_name(m)}-{f}" for d, m, f in COMBINATIONS],
)
def test_dtype_combinations_keep_every_dtype_and_match_float64(
    dtype: Any, mu_dtype: Any, features: str
) -> None:
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype), "s": jnp.asarray(0.3, dtype)}
    tx = adamx.adam(0.05, mu_dtype=mu_dtype, **FEATURES[features])
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(4):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), params)
        updates, state = step(grads, state, params)
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))  # no silent upcast
        params = optax.apply_updates(params, updates)
        assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    moments = find_state(state, adamx.ScaleByKerasAdamState)
    assert moments is not None
    assert all(m.dtype == (mu_dtype or dtype) for m in jax.tree.leaves(moments.mu))
    assert all(v.dtype == dtype for v in jax.tree.leaves(moments.nu))
    if features == "everything":
        assert all(a.dtype == dtype for a in jax.tree.leaves(adamx.ema_params(state)))
        accumulator = find_state(state, adamx.AccumulateGradientsState)
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(accumulator.acc_grads))
    assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(params))


def _closed_form(t: int, g: np.ndarray, lr: float = 0.001) -> np.ndarray:
    """One Adam update from zero moments at step t, in float64, with the spec's rounding of the
    hyper-parameters: betas rounded to float32 before the power, `1 - beta` rounded after it is
    computed from the Python float."""
    f32 = np.float32
    b1, b2, eps = float(f32(0.9)), float(f32(0.999)), float(f32(1e-7))
    m, v = float(f32(1 - 0.9)) * g, float(f32(1 - 0.999)) * g * g
    alpha = float(np.float32(lr)) * np.sqrt(1 - b2**t) / (1 - b1**t)
    return -m * alpha / (np.sqrt(v) + eps)


@pytest.mark.parametrize("dtype", PARAM_DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("t", [1, 2, 10**7, 2**31 - 1])
def test_bias_correction_at_step_1_and_at_huge_counts(t: int, dtype: Any) -> None:
    """A synthetic counter (no 10**7 steps): the update at step t is finite and correct."""
    g = np.array([1.0, -0.5, 1e-3, 0.0])
    tx = adamx.adam()
    params = jnp.zeros(4, dtype)
    state = tx.init(params)
    state = jax.tree.map(
        lambda leaf: jnp.asarray(t - 1, jnp.int32) if leaf.dtype == jnp.int32 else leaf, state
    )
    updates, state = jax.jit(tx.update)(jnp.asarray(g, dtype), state, params)
    # float32's `1 - beta_2**t` cancels for small t > 1 (Keras computes it the same way); the
    # result is stored in the parameter dtype.
    cancellation = float(jnp.finfo(jnp.float32).eps) / (1 - 0.999**t)
    rtol = max(1e-6, cancellation, float(jnp.finfo(dtype).eps) if dtype != jnp.float32 else 0)
    np.testing.assert_allclose(np.asarray(updates, np.float64), _closed_form(t, g), rtol=rtol)
    assert int(adamx.iterations(state)) == t


def test_counters_saturate_at_int32_max_instead_of_wrapping() -> None:
    """Keras's int32 counter would wrap to -2**31 after 2**31 - 1 calls (then beta**t is huge
    and the step NaN). adamx's counters saturate: the step count stays 2**31 - 1, the update
    stays finite and bias correction stays at its limit (alpha = lr)."""
    top = np.iinfo(np.int32).max
    tx = adamx.adam(
        weight_decay=0.01, use_ema=True, gradient_accumulation_steps=2, skip_nonfinite=True
    )
    params = {"w": jnp.ones(3)}
    state = tx.init(params)

    def at_the_top(path: Any, leaf: Any) -> Any:
        name = jax.tree_util.keystr(path)
        if leaf.dtype != jnp.int32 or "mini_step" in name:
            return leaf
        return jnp.asarray(top, jnp.int32)

    state = jax.tree_util.tree_map_with_path(at_the_top, state)
    step = jax.jit(tx.update)
    grads = {"w": jnp.array([1.0, -1.0, 0.5])}
    for call in range(6):
        g = {"w": jnp.full(3, jnp.nan)} if call == 2 else grads
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(params))
    counters = {
        jax.tree_util.keystr(path): int(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if leaf.dtype == jnp.int32 and "mini_step" not in jax.tree_util.keystr(path)
    }
    assert counters and all(value == top for value in counters.values()), counters
    assert int(adamx.iterations(state)) == top
