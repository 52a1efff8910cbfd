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


def _closed_form(t: int, g: np.ndarray, stored: Any, lr: float = 0.001) -> np.ndarray:
    """One Adam update from zero moments at step t, in float64, with the spec's rounding of the
    hyper-parameters: betas rounded to float32 before the power, `1 - beta` rounded after it is
    computed from the Python float. The step reads the moments as stored (`stored` dtype)."""
    f32 = np.float32
    b1, b2, eps = float(f32(0.9)), float(f32(0.999)), float(f32(1e-7))
    m, v = float(f32(1 - 0.9)) * g, float(f32(1 - 0.999)) * g * g
    m, v = (np.asarray(x, stored).astype(np.float64) for x in (m, v))
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
    expected = _closed_form(t, g, dtype)  # float16: g = 1e-3 gives a v that underflows to 0
    np.testing.assert_allclose(np.asarray(updates, np.float64), expected, rtol=rtol)
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


# --- the precision policy: a storage dtype per state leaf -----------------------------------

BF16 = jnp.bfloat16
POLICIES = {  # adam arguments -> the reference's storage rounding
    "nu bfloat16": ({"nu_dtype": BF16}, {"v": BF16}),
    "mu and nu bfloat16": ({"mu_dtype": BF16, "nu_dtype": BF16}, {"m": BF16, "v": BF16}),
    "all bfloat16": (
        {"mu_dtype": BF16, "nu_dtype": BF16, "ema_dtype": BF16, "accumulation_dtype": BF16},
        {"m": BF16, "v": BF16, "average": BF16, "acc": BF16},
    ),
}
POLICY_FEATURES = {
    "amsgrad": True,
    "use_ema": True,
    "ema_momentum": 0.9,
    "gradient_accumulation_steps": 2,
    "learning_rate": 0.01,
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_precision_policy_tracks_the_reference_with_the_same_storage_rounding(
    policy: str,
) -> None:
    """float32 parameters, state stored in bfloat16, against the float64 reference that rounds
    each state leaf to bfloat16 when it stores it (arithmetic in float64). A near-tie can round
    the other way in float32, moving one stored value by one bfloat16 ulp (2**-8 relative), so
    the bound is one such ulp of the parameters' movement; computing in bfloat16 (where
    `beta_2` rounds to 1) or storing in the wrong place is far outside it."""
    import reference

    arguments, storage = POLICIES[policy]
    rng = np.random.default_rng(3)
    params = {"a": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
    grads = [{"a": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)} for _ in range(20)]
    kwargs = {k: v for k, v in {**POLICY_FEATURES, **arguments}.items() if "dtype" not in k}
    tx = adamx.adam(**POLICY_FEATURES, **arguments)
    state, step, ours = tx.init(params), jax.jit(tx.update), params
    for g in grads:
        updates, state = step(g, state, ours)
        ours = optax.apply_updates(ours, updates)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    calls = [[np.asarray(x, np.float64) for x in jax.tree.leaves(g)] for g in grads]
    expected = reference.run(reference.Config(storage=storage, **kwargs), leaves, calls)
    unrounded = reference.run(reference.Config(**kwargs), leaves, calls)
    movement = np.max(np.abs(expected.params[0] - leaves[0]))
    deviation = np.max(np.abs(np.asarray(ours["a"], np.float64) - expected.params[0]))
    assert deviation <= 2.0**-8 * movement, (deviation, movement)
    # The rounding is real: without it the reference lands farther away than adamx is.
    rounding = np.max(np.abs(unrounded.params[0] - expected.params[0]))
    assert rounding > deviation
    ema = np.asarray(adamx.ema_params(state)["a"], np.float64)
    assert np.max(np.abs(ema - expected.average[0])) <= 4 * 2.0**-8 * movement


@pytest.mark.parametrize("dtype", [jnp.float32, BF16], ids=lambda d: jnp.dtype(d).name)
def test_precision_policy_sets_every_state_leaf_and_keeps_the_update_dtype(dtype: Any) -> None:
    tx = adamx.adam(
        **POLICY_FEATURES,
        mu_dtype=jnp.float16,
        nu_dtype=BF16,
        ema_dtype=BF16,
        accumulation_dtype=BF16,
        loss_scale_factor=8.0,
        skip_nonfinite=True,
    )
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros(2, dtype)}
    state = tx.init(params)
    for _ in range(3):
        updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    adam_state = find_state(state, adamx.ScaleByKerasAdamState)
    assert {m.dtype for m in jax.tree.leaves(adam_state.mu)} == {jnp.dtype(jnp.float16)}
    assert {v.dtype for v in jax.tree.leaves((adam_state.nu, adam_state.nu_max))} == {
        jnp.dtype(BF16)
    }
    assert {a.dtype for a in jax.tree.leaves(adamx.ema_params(state))} == {jnp.dtype(BF16)}
    accumulator = find_state(state, adamx.AccumulateGradientsState)
    assert {a.dtype for a in jax.tree.leaves(accumulator.acc_grads)} == {jnp.dtype(BF16)}


def test_bfloat16_moments_take_4_bytes_per_parameter() -> None:
    """Measured from the state pytree on a tensor of 1M elements (counters included)."""
    params = {"w": jnp.zeros((1024, 1024), jnp.float32)}
    for arguments, expected in [({}, 8.0), ({"mu_dtype": BF16, "nu_dtype": BF16}, 4.0)]:
        state = adamx.adam(**arguments).init(params)
        per_parameter = sum(x.nbytes for x in jax.tree.leaves(state)) / params["w"].size
        assert expected <= per_parameter < expected + 1e-4, (arguments, per_parameter)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"nu_dtype": jnp.int8}, "`nu_dtype` must be None, a real floating dtype"),
        ({"nu_dtype": jnp.complex64}, "`nu_dtype` must be None, a real floating dtype"),
        ({"mu_dtype": "bfloat17"}, "`mu_dtype` must be None, a real floating dtype"),
        ({"ema_dtype": BF16}, "`ema_dtype` has no effect without `use_ema=True`"),
        ({"accumulation_dtype": BF16}, "`accumulation_dtype` has no effect without"),
        ({"use_ema": True, "ema_dtype": "int32"}, "`ema_dtype` must be a real floating dtype"),
    ],
)
def test_precision_policy_rejects_bad_dtypes(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        adamx.adam(**arguments)
