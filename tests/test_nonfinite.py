"""Non-finite gradients: Keras's behaviour by default, and the opt-in guard that skips them."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import bits, check_against_keras, random_grads, random_params, run_adamx

import adamx
from adamx._nonfinite import all_finite

BAD_CALLS = (3, 4, 9)


def poisoned(grads: list[Any], kind: str) -> list[Any]:
    """NaN or +/-inf in one element of one leaf on each of BAD_CALLS."""
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    out = list(grads)
    for call in BAD_CALLS:
        out[call] = jax.tree.map(np.copy, grads[call])
        out[call]["dense"]["kernel"][1, 2] = value
    return out


KERAS_CONFIGS = {
    "defaults": {},
    "amsgrad": {"amsgrad": True},
    "clipnorm": {"clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.5},
    "global_clipnorm": {"global_clipnorm": 0.5},
    "ema+overwrite": {"use_ema": True, "ema_overwrite_frequency": 3},
    "accumulation": {"gradient_accumulation_steps": 2},
    "weight_decay": {"weight_decay": 0.1},
}


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", list(KERAS_CONFIGS))
def test_without_the_guard_non_finite_gradients_do_what_keras_does(name: str, kind: str) -> None:
    """Keras applies the step: NaN spreads through the moments into the parameters (a global
    norm that is not finite makes every gradient NaN). Op by op, bit for bit the same here."""
    params = random_params(0)
    grads = poisoned(random_grads(0, 12, params), kind)
    ours, _, _ = check_against_keras(KERAS_CONFIGS[name], params, grads, jit=False)
    if not (name == "clipvalue" and "inf" in kind):  # clipping turns an infinity into +-0.5
        assert not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(ours))


GUARDED = {
    "defaults": {},
    "everything": {
        "learning_rate": optax.exponential_decay(0.01, 3, 0.7),
        "amsgrad": True,
        "weight_decay": 0.05,
        "exclude_from_weight_decay": ["bias"],
        "global_clipnorm": 1.0,
        "use_ema": True,
        "ema_overwrite_frequency": 2,
        "loss_scale_factor": 4.0,
        "gradient_accumulation_steps": 3,
    },
}


@pytest.mark.parametrize("jit", [False, True], ids=["op-by-op", "jit"])
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", list(GUARDED))
def test_guard_skips_bad_calls_leaving_everything_bit_identical(
    name: str, kind: str, jit: bool
) -> None:
    params = random_params(0)
    params["scale"] = np.float32(-0.0)  # a signed zero must survive a skipped call
    clean = random_grads(0, 12, params)
    grads = poisoned(clean, kind)
    tx = adamx.adam(**GUARDED[name], skip_nonfinite=True)

    def step(params: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    p, state = params, tx.init(params)
    with contextlib.nullcontext() if jit else jax.disable_jit():  # run_adamx's modes
        step_fn = jax.jit(step) if jit else step
        for call, g in enumerate(grads):
            new_p, new_state = step_fn(p, state, g)
            if call in BAD_CALLS:
                assert bits(new_p) == bits(p)
                assert bits(new_state.inner_state) == bits(state.inner_state)
                assert int(new_state.skipped) == int(state.skipped) + 1
            p, state = new_p, new_state
    assert int(state.skipped) == len(BAD_CALLS)

    # The guarded run is the unguarded run on the good calls only.
    good = [g for call, g in enumerate(clean) if call not in BAD_CALLS]
    expected, expected_state = run_adamx(adamx.adam(**GUARDED[name]), params, good, jit=jit)
    assert bits(p) == bits(expected)
    assert bits(state.inner_state) == bits(expected_state)


def test_guard_in_a_custom_chain_and_with_missing_gradients() -> None:
    tx = adamx.skip_nonfinite_updates(
        optax.chain(adamx.clip_by_global_norm(1.0), adamx.scale_by_keras_adam(), optax.scale(-1))
    )
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"a": jnp.ones(2), "b": jnp.full(3, jnp.nan)}, state)
    assert bits(updates) == bits(jax.tree.map(lambda x: jnp.full_like(x, -0.0), params))
    assert int(adamx.iterations(state)) == 0

    guarded = adamx.adam(skip_nonfinite=True)
    state = guarded.init(params)
    with pytest.warns(UserWarning, match="Gradients do not exist for parameters"):
        _, state = guarded.update({"a": jnp.ones(2), "b": None}, state, params)  # no gradient
    assert int(state.skipped) == 0 and int(adamx.iterations(state)) == 1


def test_loss_scale_skips_keep_signed_zeros() -> None:
    tx = adamx.loss_scale_optimizer(adamx.adam(), initial_scale=4.0)
    params = jnp.array([-0.0, 0.0, 1.0])
    updates, _ = tx.update(jnp.array([jnp.inf, 1.0, 1.0]), tx.init(params), params)
    assert bits(optax.apply_updates(params, updates)) == bits(params)


@pytest.mark.parametrize("jit", [False, True], ids=["op-by-op", "jit"])
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf, 7e4])
@pytest.mark.parametrize("leaf", [0, 1, 2, 3])
def test_all_finite_over_mixed_dtypes(leaf: int, bad: float | None, jit: bool) -> None:
    """Against NumPy's `isfinite`, whichever leaf (and dtype) holds the bad value; 7e4 is finite
    in float32 and bfloat16 but overflows float16."""
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.float32]
    tree = [jnp.linspace(-3.0, 3.0, 5 + i, dtype=dtype) for i, dtype in enumerate(dtypes)]
    if bad is not None:
        tree[leaf] = tree[leaf].at[leaf].set(bad)
    expected = all(np.isfinite(np.asarray(x, np.float64)).all() for x in tree)
    check = jax.jit(all_finite) if jit else all_finite
    assert bool(check(tree)) == expected
    assert bool(check([])) and bool(check([jnp.ones(3), None]))


@pytest.mark.parametrize("guard", ["skip_nonfinite", "loss_scale_optimizer"])
def test_numpy_infinities_raise_no_numpy_warning(guard: str) -> None:
    """Eager, with NumPy gradients: the check runs in JAX, so NumPy never sees `inf - inf`."""
    params = {"w": np.ones(3, np.float32)}
    tx = (
        adamx.adam(skip_nonfinite=True)
        if guard == "skip_nonfinite"
        else adamx.loss_scale_optimizer(adamx.adam())
    )
    grads = {"w": np.array([np.inf, -np.inf, np.nan], np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(np.signbit(updates["w"]), True)
