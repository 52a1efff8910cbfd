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
from adamx._rounding import round_to, rounding_key

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
    rounded = np.asarray(round_to(jnp.full((n,), x, jnp.float32), dtype, KEY, 0), np.float64)
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
        assert_bit_equal(round_to(x, dtype, KEY, 0), x.astype(dtype))


def test_streams_leaves_and_elements_get_independent_bits() -> None:
    x = jnp.full((4096,), 1.0 + 2.0**-8, jnp.float32)  # probability 1/2
    draws = [
        round_to(x, jnp.bfloat16, KEY, 0),
        round_to(x, jnp.bfloat16, KEY, 1),  # another leaf
        round_to(x, jnp.bfloat16, rounding_key(jnp.uint32(11), jnp.int32(5), 2), 0),  # stream
        round_to(x, jnp.bfloat16, rounding_key(jnp.uint32(11), jnp.int32(6), 1), 0),  # step
        round_to(x, jnp.bfloat16, rounding_key(jnp.uint32(12), jnp.int32(5), 1), 0),  # seed
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
