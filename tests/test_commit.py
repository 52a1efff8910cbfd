"""The `commit` extra argument: False changes nothing, True changes nothing about the result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_bit_equal, random_grads, random_params, run_adamx

import adamx
from adamx._commit import update_committed
from adamx.benchmarks import ALL_FEATURES as BENCHMARKED

# The benchmark's features, with an overwrite due within the few calls these tests make.
ALL_FEATURES = {**BENCHMARKED, "learning_rate": 0.01, "ema_overwrite_frequency": 2}
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformationExtraArgs]] = {
    "defaults": lambda: adamx.adam(),
    "amsgrad+nesterov": lambda: adamx.adam(0.01, amsgrad=True, nesterov=True),
    "all features": lambda: adamx.adam(**ALL_FEATURES),
    "all features+accumulation": lambda: adamx.adam(**ALL_FEATURES, gradient_accumulation_steps=3),
    "mu bfloat16+skip_nonfinite": lambda: adamx.adam(mu_dtype=jnp.bfloat16, skip_nonfinite=True),
    "loss_scale_optimizer": lambda: adamx.loss_scale_optimizer(
        adamx.adam(0.01, use_ema=True, gradient_accumulation_steps=2), initial_scale=4.0
    ),
    "accumulate optax.adam": lambda: adamx.accumulate_gradients(optax.adam(0.01), 2),
    "skip around optax.adam": lambda: adamx.skip_nonfinite_updates(optax.adam(0.01)),
}


def _mid_run(tx: optax.GradientTransformation, calls: int = 5) -> tuple[Any, Any, Any]:
    """Parameters (with a -0.0 entry) and a state after a few calls, and the next gradient."""
    params = random_params(3)
    params["dense"]["bias"][0] = -0.0
    grads = random_grads(3, calls + 1, params)
    params, state = run_adamx(tx, params, grads[:calls])
    return params, state, grads[calls]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_adamx_optimizers_declare_the_contract(name: str) -> None:
    tx = OPTIMIZERS[name]()  # the wrappers keep it around any inner
    assert isinstance(tx, adamx.Committable)
    assert isinstance(optax.with_extra_args_support(tx), adamx.Committable)


@pytest.mark.parametrize(
    "commit",
    [jnp.array([True, False]), jnp.asarray(1), 1, jnp.asarray(1.0), np.array([True])],
    ids=["bool[2]", "int32", "python int", "float32", "bool[1]"],
)
@pytest.mark.parametrize("name", ["defaults", "all features+accumulation", "loss_scale_optimizer"])
def test_commit_must_be_a_boolean_scalar(name: str, commit: Any) -> None:
    tx = OPTIMIZERS[name]()
    params = random_params(3)
    state = tx.init(params)
    with pytest.raises(TypeError, match="`commit` must be a boolean scalar"):
        tx.update(params, state, params, commit=commit)
    with pytest.raises(TypeError, match="`commit` must be a boolean scalar"):
        jax.jit(tx.update)(params, state, params, commit=commit)


@pytest.mark.parametrize("commit", [True, np.bool_(False), jnp.asarray(True)])
def test_commit_accepts_python_numpy_and_jax_booleans(commit: Any) -> None:
    tx = adamx.adam(0.1)
    params = random_params(3)
    _, state = tx.update(params, tx.init(params), params, commit=commit)
    assert adamx.iterations(state).shape == ()
    assert int(adamx.iterations(state)) == int(bool(commit))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_uncommitted_call_changes_no_bit(name: str) -> None:
    tx = OPTIMIZERS[name]()
    params, state, g = _mid_run(tx)
    updates, new_state = jax.jit(tx.update)(g, state, params, commit=jnp.asarray(False))
    assert_bit_equal(new_state, state)
    new_params = optax.apply_updates(params, updates)
    for new, old in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.signbit(new), np.signbit(old))  # -0.0 stays -0.0
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_committed_call_is_the_plain_call(name: str) -> None:
    tx = OPTIMIZERS[name]()
    params, state, g = _mid_run(tx)  # the 6th call is a real update for N = 2 and N = 3
    plain = jax.jit(tx.update)(g, state, params)
    committed = jax.jit(tx.update)(g, state, params, commit=jnp.asarray(True))
    assert_bit_equal(committed, plain)
    moved = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(plain[0]))
    assert moved > 0, "the call made no update: the comparison would be vacuous"


def test_fallback_selects_for_a_transformation_without_the_contract() -> None:
    inner = optax.with_extra_args_support(optax.adam(0.1))
    assert not isinstance(inner, adamx.Committable)
    params = jnp.array([1.0, -0.0])
    state = inner.init(params)
    updates, new_state = update_committed(inner, jnp.asarray(False), jnp.ones(2), state, params)
    assert_bit_equal(new_state, state)
    assert bool(jnp.all(jnp.signbit(updates)) & jnp.all(updates == 0))
