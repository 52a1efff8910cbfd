"""Stochastic rounding: unbiased, exact on representable values, deterministic and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_bit_equal, random_grads, random_params, run_adamx

import adamx
from adamx._rounding import random_bits, round_to, rounding_key, swap_halves

BF16 = jnp.bfloat16
KEY = rounding_key(jnp.uint32(11), jnp.int32(5), 1)


@pytest.mark.parametrize(
    ("dtype", "x", "up", "ulp"),
    [
        (jnp.bfloat16, 1.0 + 2.0**-10, 1.0 / 8, 2.0**-7),  # 1/8 of an ulp above 1
        (jnp.bfloat16, -3.0 - 3 * 2.0**-8, 3.0 / 4, 2.0**-6),  # away from zero for negatives
        (jnp.float16, 1.0 + 2.0**-12, 1.0 / 4, 2.0**-10),
        (jnp.float16, 2.0**-20 + 2.0**-26, 1.0 / 4, 2.0**-24),  # subnormal
    ],
)
def test_rounds_up_with_the_probability_of_the_distance(
    dtype: Any, x: float, up: float, ulp: float
) -> None:
    """P(away from zero) = (|x| - |toward zero|) / ulp, so the mean is x (closed form)."""
    n = 200_000
    rounded = np.asarray(
        round_to(jnp.full((n,), x, jnp.float32), dtype, random_bits(KEY, 0, (n,))), np.float64
    )
    low = np.trunc(abs(x) / ulp) * ulp * np.sign(x)
    assert set(np.unique(rounded)) <= {low, low + np.sign(x) * ulp}
    fraction = np.mean(rounded != low)
    expected_fraction = (abs(x) - abs(low)) / ulp
    assert expected_fraction == pytest.approx(up)
    assert abs(fraction - up) < 5 * np.sqrt(up * (1 - up) / n)
    assert abs(rounded.mean() - x) < 5 * ulp * np.sqrt(up * (1 - up) / n)


def test_representable_and_special_values_are_kept() -> None:
    # 2**-130 is a bfloat16 subnormal, and far below float16's smallest (2**-24): 0 there.
    x = jnp.array([0.0, -0.0, 1.5, -2.0, 2.0**-130, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    for dtype in (jnp.bfloat16, jnp.float16):
        assert_bit_equal(round_to(x, dtype, random_bits(KEY, 0, x.shape)), x.astype(dtype))


def test_streams_leaves_and_elements_get_independent_bits() -> None:
    x = jnp.full((4096,), 1.0 + 2.0**-8, jnp.float32)  # probability 1/2

    def draw(key: jax.Array, leaf: int = 0, swap: bool = False) -> jax.Array:
        bits = random_bits(key, leaf, x.shape)
        return round_to(x, jnp.bfloat16, swap_halves(bits) if swap else bits)

    draws = [
        draw(KEY),
        draw(KEY, leaf=1),
        draw(KEY, swap=True),  # the other half of the same word (the second moment's)
        draw(rounding_key(jnp.uint32(11), jnp.int32(5), 2)),  # another stream
        draw(rounding_key(jnp.uint32(11), jnp.int32(6), 1)),  # another step
        draw(rounding_key(jnp.uint32(12), jnp.int32(5), 1)),  # another seed
    ]
    ups = [np.asarray(d, np.float32) > 1.0 for d in draws]
    for i in range(len(ups)):
        for j in range(i):
            agreement = np.mean(ups[i] == ups[j])  # 1/2 for independent fair coins
            assert abs(agreement - 0.5) < 5 * 0.5 / np.sqrt(x.size), (i, j, agreement)


def test_a_bfloat16_average_keeps_moving_where_round_to_nearest_stalls() -> None:
    """An EMA (momentum 0.999) of parameters drifting by 1e-5 per step from 1.0: each change
    of the average is far below half a bfloat16 ulp (2**-8), so round-to-nearest never moves;
    stochastic rounding follows the float64 closed form on average."""
    steps, n = 300, 65536
    params = {"w": jnp.ones(n, jnp.float32)}
    drift = {"w": jnp.full(n, 1e-5, jnp.float32)}
    results = {}
    for seed in (None, 0):
        tx = adamx.ema_of_params(0.999, ema_dtype=jnp.bfloat16, rounding_seed=seed)
        state, p = tx.init(params), params
        for _ in range(steps):
            _, state = jax.jit(tx.update)(drift, state, p)
            p = optax.apply_updates(p, drift)
        results[seed] = np.asarray(state.average["w"], np.float64)
    # Closed form: average after step k of p_k = 1 + 1e-5 k (the first call copies p_1).
    average = 1.0 + 1e-5
    for k in range(2, steps + 1):
        average = 0.999 * average + 0.001 * (1.0 + 1e-5 * k)
    assert (results[None] == 1.0).all()  # stalled
    # Each element's rounding noise adds up to a variance of about ulp x movement.
    sigma = np.sqrt(2.0**-8 * (average - 1.0) / n)
    assert abs(results[0].mean() - average) < 5 * sigma < 0.1 * (average - 1.0)


def _bfloat16_state(seed: int) -> optax.GradientTransformation:
    return adamx.adam(
        0.01,
        amsgrad=True,
        mu_dtype=jnp.bfloat16,
        nu_dtype=jnp.bfloat16,
        use_ema=True,
        ema_dtype=jnp.bfloat16,
        rounding_seed=seed,
    )


def test_same_seed_is_bit_identical_and_another_seed_is_not() -> None:
    params = random_params(0)
    grads = random_grads(0, 100, params)
    first, again, other = (run_adamx(_bfloat16_state(s), params, grads) for s in (7, 7, 8))
    assert_bit_equal(first, again)
    assert any(
        (np.asarray(a) != np.asarray(b)).any()
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other), strict=True)
    )


def test_resume_from_an_orbax_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = _bfloat16_state(3)
    params = jax.tree.map(np.asarray, random_params(1))
    grads = random_grads(1, 100, params)
    straight = run_adamx(tx, params, grads)
    params_50, state_50 = run_adamx(tx, params, grads[:50])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "step_50", {"params": params_50, "opt_state": state_50})
    checkpointer.wait_until_finished()
    target = {
        "params": jax.eval_shape(lambda: params),
        "opt_state": jax.eval_shape(tx.init, params),
    }
    restored = checkpointer.restore(tmp_path / "step_50", target)
    resumed = run_adamx(tx, restored["params"], grads[50:], state=restored["opt_state"])
    assert_bit_equal(resumed, straight)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_rejects_bad_seeds(seed: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="`rounding_seed` must be None or an integer"):
        adamx.adam(rounding_seed=seed)


def test_bfloat16_parameters_land_on_a_neighbour_of_the_float32_result() -> None:
    """The first step from zero moments is the same for float32 and bfloat16 parameters (the
    arithmetic is float32): the bfloat16 result is one of the two bfloat16 neighbours of the
    float32 one, the upper one with the probability of the distance."""
    n = 100_000
    start = jnp.full((n,), 1.0, jnp.float32)
    grads = jnp.full((n,), -1.0, jnp.float32)  # step +lr: far below bfloat16's ulp at 1
    lr = 2.0**-10  # 1/8 of bfloat16's ulp (2**-7) above 1
    wide = adamx.adam(lr, rounding_seed=0)
    updates, _ = wide.update(grads, wide.init(start), start)
    expected = np.asarray(start + updates, np.float64)  # 1 + about 2**-10
    narrow = adamx.adam(lr, rounding_seed=0)
    p = start.astype(jnp.bfloat16)
    updates, _ = narrow.update(grads.astype(jnp.bfloat16), narrow.init(p), p)
    assert updates.dtype == jnp.float32
    landed = np.asarray(optax.apply_updates(p, updates), np.float64)
    assert set(np.unique(landed)) == {1.0, 1.0 + 2.0**-7}
    up = (expected[0] - 1.0) / 2.0**-7
    assert abs(np.mean(landed > 1.0) - up) < 5 * np.sqrt(up * (1 - up) / n)


def test_bfloat16_parameters_keep_moving_where_round_to_nearest_stalls() -> None:
    """200 steps of about 1e-4 (Adam's normalised step) on bfloat16 parameters at 1: under half
    an ulp (2**-8), so round-to-nearest never moves; stochastic rounding follows float32
    master weights on average."""
    n, steps, lr = 4096, 200, 1e-4
    grads = {"w": jnp.full((n,), -1.0)}
    results = {}
    for name, dtype, seed in [("f32", jnp.float32, None), ("rne", BF16, None), ("sr", BF16, 1)]:
        tx = adamx.adam(lr, rounding_seed=seed)
        params = {"w": jnp.ones(n, dtype)}
        step = jax.jit(tx.update)
        state, g = tx.init(params), {"w": grads["w"].astype(dtype)}
        for _ in range(steps):
            updates, state = step(g, state, params)
            params = optax.apply_updates(params, updates)
        results[name] = np.asarray(params["w"], np.float64)
    movement = results["f32"].mean() - 1.0
    assert movement == pytest.approx(steps * lr, rel=0.01)
    assert (results["rne"] == 1.0).all()
    sigma = np.sqrt(2.0**-7 * movement / n)  # each element's rounding noise: ulp x movement
    assert abs(results["sr"].mean() - results["f32"].mean()) < 5 * sigma < 0.1 * movement
