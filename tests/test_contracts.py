"""Contracts every public transformation keeps, whatever it computes."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

FACTORIES: dict[str, Callable[[], optax.GradientTransformation]] = {
    "scale_by_keras_adam": lambda: adamx.scale_by_keras_adam(),
    "scale_by_keras_adam/amsgrad+nesterov": lambda: adamx.scale_by_keras_adam(
        amsgrad=True, nesterov=True, mu_dtype=jnp.float32
    ),
    "clip_by_norm": lambda: adamx.clip_by_norm(0.5),
    "clip_by_value": lambda: adamx.clip_by_value(0.5),
    "clip_by_global_norm": lambda: adamx.clip_by_global_norm(0.5),
    "decoupled_weight_decay": lambda: adamx.decoupled_weight_decay(
        0.1, learning_rate=0.01, exclude_from_weight_decay=["b"]
    ),
    "ema_of_params": lambda: adamx.ema_of_params(0.9, 2),
    "static_loss_scale": lambda: adamx.static_loss_scale(adamx.adam(global_clipnorm=1.0), 8.0),
    "accumulate_gradients": lambda: adamx.accumulate_gradients(adamx.adam(), 2),
    "loss_scale_optimizer": lambda: adamx.loss_scale_optimizer(adamx.adam(), 8.0, 2),
    "skip_missing_gradients": lambda: adamx.skip_missing_gradients(adamx.scale_by_keras_adam()),
    "adam": lambda: adamx.adam(),
    "adam/8-bit moments": lambda: adamx.adam(
        amsgrad=True, mu_dtype="8bit", nu_dtype="8bit", min_8bit_size=2, skip_nonfinite=True
    ),
    "adam/everything": lambda: adamx.adam(
        optax.linear_schedule(0.01, 0.001, 10),
        amsgrad=True,
        weight_decay=0.01,
        global_clipnorm=1.0,
        use_ema=True,
        ema_overwrite_frequency=2,
        loss_scale_factor=4.0,
        gradient_accumulation_steps=2,
        nesterov=True,
        exclude_from_weight_decay=["b"],
    ),
}

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _params(dtype: Any) -> Any:
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), dtype),
        "b": jnp.asarray(rng.normal(size=(2,)), dtype),
        "s": jnp.asarray(0.5, dtype),
        "empty": jnp.zeros((0, 4), dtype),
    }


def _grads(params: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _run(
    tx: optax.GradientTransformation, params: Any, steps: int = 3
) -> tuple[Any, Any, list[Any]]:
    traces: list[None] = []

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any, Any]:
        traces.append(None)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    state = tx.init(params)
    states = [state]
    for i in range(steps):
        params, state, updates = step(params, state, _grads(params, i))
        states.append(state)
    assert len(traces) == 1, "recompiled after the first step"
    return params, updates, states


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_jits_once_and_keeps_dtypes(name: str, dtype: Any) -> None:
    params, updates, _ = _run(FACTORIES[name](), _params(dtype))
    for leaf in jax.tree.leaves((params, updates)):
        assert leaf.dtype == dtype


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_is_arrays_and_survives_cond_and_flatten(name: str) -> None:
    _, _, states = _run(FACTORIES[name](), _params(jnp.float32))
    initial, later = states[0], states[-1]
    for leaf in jax.tree.leaves(later):
        assert isinstance(leaf, jax.Array)
    leaves, treedef = jax.tree.flatten(later)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(initial)
    chosen = jax.lax.cond(jnp.asarray(True), lambda: later, lambda: initial)
    for x, y in zip(jax.tree.leaves(chosen), jax.tree.leaves(later), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_donated_state_leaves_the_transformation_reusable(name: str) -> None:
    """A donated state must own its buffers: init again, and step again, after donating one."""
    tx = FACTORIES[name]()
    params = _params(jnp.float32)

    @functools.partial(jax.jit, donate_argnums=1)
    def step(params: Any, state: Any, grads: Any) -> Any:
        return tx.update(grads, state, params)[1]

    for seed in range(2):
        state = step(params, tx.init(params), _grads(params, seed))
        assert all(not leaf.is_deleted() for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_composes_inside_optax_chain(name: str) -> None:
    tx = optax.chain(optax.identity(), FACTORIES[name](), optax.identity())
    params, _, _ = _run(tx, _params(jnp.float32))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


# Integers that fix the computation's structure are static; numbers are injected.
STRUCTURAL = ("ema_overwrite_frequency", "steps_per_update", "gradient_accumulation_steps")
INJECTABLE = {
    "scale_by_keras_adam": (adamx.scale_by_keras_adam, {"learning_rate": 0.01}),
    "clip_by_norm": (adamx.clip_by_norm, {"clipnorm": 0.5}),
    "clip_by_value": (adamx.clip_by_value, {"clipvalue": 0.5}),
    "clip_by_global_norm": (adamx.clip_by_global_norm, {"global_clipnorm": 0.5}),
    "decoupled_weight_decay": (adamx.decoupled_weight_decay, {"weight_decay": 0.1}),
    "ema_of_params": (adamx.ema_of_params, {"ema_momentum": 0.9, "ema_overwrite_frequency": 2}),
    "static_loss_scale": (
        functools.partial(adamx.static_loss_scale, adamx.adam(global_clipnorm=1.0)),
        {"loss_scale_factor": 4.0},
    ),
    "adam/global_clipnorm": (adamx.adam, {"learning_rate": 0.01, "global_clipnorm": 0.5}),
    "adam/clipnorm": (adamx.adam, {"learning_rate": 0.01, "clipnorm": 0.5, "use_ema": True}),
    "adam": (
        adamx.adam,
        {
            "learning_rate": 0.01,
            "weight_decay": 0.1,
            "use_ema": True,
            "ema_overwrite_frequency": 3,
            "gradient_accumulation_steps": 2,
        },
    ),
}


def test_structural_integers_injected_as_arrays_get_a_clear_error() -> None:
    with pytest.raises(TypeError, match="static_args"):
        optax.inject_hyperparams(adamx.adam)(gradient_accumulation_steps=2).init(jnp.zeros(2))


@pytest.mark.parametrize("name", list(INJECTABLE))
def test_works_under_inject_hyperparams(name: str) -> None:
    factory, kwargs = INJECTABLE[name]
    accepted = inspect.signature(factory).parameters
    static = [arg for arg in STRUCTURAL if arg in accepted]
    injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    plain = factory(**kwargs)
    params = _params(jnp.float32)
    ours, _, _ = _run(injected, params)
    expected, _, _ = _run(plain, params)
    # Injected numbers become float32 arrays (1 - beta rounds in float32): a few ulp apart.
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
