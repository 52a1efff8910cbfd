"""The contracts optax's and Flax's own test suites check of an optimizer, for adamx.

Written from what `optax/_src/alias_test.py`, `optax/contrib/_common_test.py`,
`optax/transforms/*_test.py`, `optax/tree_utils/_state_utils_test.py` and
`optax/schedules/_inject_test.py` check, over adamx configurations. Where an optax test's
expectation is optax's own arithmetic, the property is tested instead; where adamx differs by
design, the test says so. float64 (`test_float64.py`), sharding (`sharded_check.py`) and
`nnx.Optimizer` (`test_flax.py`) run over the same configurations in their own files.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import CONTRACT_CONFIGS as CONFIGS
from harness import assert_bit_equal

import adamx

IDS = list(CONFIGS)


def minimise(
    tx: optax.GradientTransformation, loss: Callable[[Any], jax.Array], params: Any, steps: int
) -> tuple[Any, Any]:
    """`steps` jitted updates on `loss`, with the loss scaled as the state asks (for
    `loss_scale_optimizer`; unchanged otherwise)."""

    def step(_: int, carry: tuple[Any, Any]) -> tuple[Any, Any]:
        params, state = carry
        grads = jax.grad(lambda p: adamx.scale_loss(loss(p), state))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(lambda p, s: jax.lax.fori_loop(0, steps, step, (p, s)))(params, tx.init(params))


@pytest.mark.parametrize("name", IDS)
def test_minimises_a_parabola(name: str) -> None:
    target = {"kernel": jnp.array([1.0, -2.0, 3.0]), "bias": jnp.array([-0.5])}
    params = jax.tree.map(jnp.zeros_like, target)

    def loss(p: Any) -> jax.Array:
        return sum(
            jnp.sum((x - t) ** 2)
            for x, t in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True)
        )

    final, _ = minimise(CONFIGS[name](0.05), loss, params, 1000)
    assert float(loss(final)) < 1e-3 * float(loss(params))


@pytest.mark.parametrize("name", IDS)
def test_minimises_rosenbrock(name: str) -> None:
    def loss(p: Any) -> jax.Array:
        x, y = p["xy"][0], p["xy"][1]
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    params = {"xy": jnp.array([-1.0, 1.0])}
    final, _ = minimise(CONFIGS[name](0.02), loss, params, 4000)
    np.testing.assert_allclose(final["xy"], [1.0, 1.0], atol=5e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=str)
@pytest.mark.parametrize("name", IDS)
def test_updates_and_moments_keep_the_parameter_dtype(name: str, dtype: Any) -> None:
    """Moments in the parameters' dtype, unless the configuration sets their storage dtype
    (8-bit moments: codes for every tensor but scalars, here). With stochastic rounding,
    updates of narrow parameters are float32: they land exactly on the stochastically rounded
    value (`stochastic_round_params`)."""
    rounding = name.startswith("bfloat16 state")
    update_dtype = jnp.float32 if rounding and dtype != jnp.float32 else dtype
    params = {"kernel": jnp.ones((2, 3), dtype), "bias": jnp.zeros(3, dtype)}
    tx = CONFIGS[name](0.1)
    state = tx.init(params)
    for _ in range(2):
        updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
        assert all(u.dtype == update_dtype for u in jax.tree.leaves(updates))
        params = optax.apply_updates(params, updates)
        assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    moments = adamx._state.find_state(state, adamx.ScaleByKerasAdamState)
    if name == "8-bit moments":  # 8-bit codes (the moments' storage, not their arithmetic)
        assert {x.dtype for x in jax.tree.leaves(moments.mu)} == {jnp.dtype(jnp.float8_e4m3fn)}
        assert {x.dtype for x in jax.tree.leaves(moments.nu)} == {jnp.dtype(jnp.uint8)}
        return
    stored = jnp.bfloat16 if rounding else dtype
    assert all(x.dtype == stored for x in jax.tree.leaves((moments.mu, moments.nu)))


@pytest.mark.parametrize("mu_dtype", [jnp.bfloat16, jnp.float32], ids=str)
def test_explicit_mu_dtype(mu_dtype: Any) -> None:
    tx = adamx.adam(0.1, mu_dtype=mu_dtype)
    params = {"w": jnp.ones(3, jnp.float32)}
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    moments = adamx._state.find_state(state, adamx.ScaleByKerasAdamState)
    assert moments.mu["w"].dtype == mu_dtype and moments.nu["w"].dtype == jnp.float32
    assert updates["w"].dtype == jnp.float32


@pytest.mark.parametrize("name", IDS)
def test_ignores_extra_arguments_it_does_not_know(name: str) -> None:
    tx = CONFIGS[name](0.1)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    plain = tx.update(params, state, params)
    extra = tx.update(params, state, params, value=jnp.float32(3.0), unknown=object())
    assert_bit_equal(extra, plain)


# Each numeric argument injected alone (`inject_hyperparams` injects every numeric argument,
# defaults included, unless it is static). Numbers the static path rounds to float32 exactly
# as an injected float32 array is give the same bits. `beta_1` and `beta_2` do not: Keras
# computes `1 - beta` in double precision before rounding, and an injected beta is float32
# already, so `1 - beta` can differ in its last bit (the spec, 5.4).
BIT_IDENTICAL = {
    "learning_rate": ({}, 0.01),
    "epsilon": ({}, 1e-3),
    "weight_decay": ({}, 0.1),
    "global_clipnorm": ({}, 0.5),
    "clipnorm": ({}, 0.5),
    "clipvalue": ({}, 0.5),
    "ema_momentum": ({"use_ema": True, "ema_overwrite_frequency": 2}, 0.9),
    "loss_scale_factor": ({}, 4.0),
}


def _run(tx: optax.GradientTransformation, steps: int = 4) -> Any:
    params = {"w": jnp.linspace(-1.0, 1.0, 5), "b": jnp.array([0.5])}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1.0)) * 3.0, params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _inject_only(argument: str) -> Any:
    static = [name for name in inspect.signature(adamx.adam).parameters if name != argument]
    return optax.inject_hyperparams(adamx.adam, static_args=static)


@pytest.mark.parametrize("argument", list(BIT_IDENTICAL))
def test_inject_hyperparams_under_jit_gives_the_static_bits(argument: str) -> None:
    others, value = BIT_IDENTICAL[argument]
    injected = _inject_only(argument)(**others, **{argument: value})
    static = adamx.adam(**others, **{argument: value})
    ours, expected = _run(injected), _run(static)
    assert_bit_equal(ours, expected)
    assert not np.allclose(ours["w"], np.linspace(-1.0, 1.0, 5))  # it moved


@pytest.mark.parametrize("argument", ["beta_1", "beta_2"])
def test_injected_betas_differ_by_their_rounding_only(argument: str) -> None:
    ours, static = (
        _run(_inject_only(argument)(**{argument: 0.8})),
        _run(adamx.adam(**{argument: 0.8})),
    )
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(static), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_an_injected_learning_rate_can_be_changed_between_steps() -> None:
    tx = optax.inject_hyperparams(adamx.adam)(learning_rate=0.1)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    state = optax.tree.set(state, learning_rate=jnp.float32(0.0))
    updates, state = jax.jit(tx.update)(params, state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    assert float(optax.tree.get(state, "learning_rate")) == 0.0


@pytest.mark.parametrize("name", IDS)
def test_optax_multisteps(name: str) -> None:
    """MultiSteps around adamx: parameters move only on every second call (every fourth
    around adamx's own accumulation over 2 calls)."""
    tx = optax.MultiSteps(CONFIGS[name](0.05), every_k_schedule=2)
    period = 4 if name == "accumulation" else 2
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    state = tx.init(params)
    for call in range(1, 9):
        grads = {"w": jnp.cos(params["w"] * call)}
        updates, state = jax.jit(tx.update)(grads, state, params)
        new = optax.apply_updates(params, updates)
        assert bool(jnp.any(new["w"] != params["w"])) == (call % period == 0)
        params = new


def test_multisteps_is_close_to_adamx_accumulation() -> None:
    """MultiSteps averages by a running mean, adamx as Keras does (sum, then divide): last
    bits differ, the numbers agree."""
    grads = [{"w": jnp.array([0.3, -1.2, 2.0]) * (i + 1)} for i in range(6)]
    results = []
    for tx in (
        optax.MultiSteps(adamx.adam(0.05), every_k_schedule=2),
        adamx.adam(0.05, gradient_accumulation_steps=2),
    ):
        params = {"w": jnp.zeros(3)}
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
        results.append(params["w"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


@pytest.mark.parametrize("name", IDS)
def test_apply_if_finite(name: str) -> None:
    tx = optax.apply_if_finite(CONFIGS[name](0.1), max_consecutive_errors=3)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, bad_state = jax.jit(tx.update)({"w": jnp.array([jnp.nan, 1.0, 1.0])}, state, params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], params["w"])
    assert int(bad_state.notfinite_count) == 1
    assert_bit_equal(bad_state.inner_state, state.inner_state)
    updates, _ = jax.jit(tx.update)({"w": jnp.ones(3)}, bad_state, params)
    assert bool(jnp.all(updates["w"] != 0)) or name == "accumulation"


@pytest.mark.parametrize("name", IDS)
def test_masked_leaves_pass_through(name: str) -> None:
    """optax.masked applies adamx to the masked-in leaves and passes the others through."""
    params = {"a": jnp.ones(3), "b": jnp.full(2, 2.0)}
    grads = {"a": jnp.full(3, 0.5), "b": jnp.full(2, 0.25)}
    tx = optax.masked(CONFIGS[name](0.1), {"a": True, "b": False})
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    alone = CONFIGS[name](0.1)
    expected, _ = alone.update(
        {"a": grads["a"]}, alone.init({"a": params["a"]}), {"a": params["a"]}
    )
    assert_bit_equal(updates["a"], expected["a"])
    assert_bit_equal(updates["b"], grads["b"])


@pytest.mark.parametrize("name", IDS)
def test_partition(name: str) -> None:
    params = {"a": jnp.ones(3), "b": jnp.full(2, 2.0)}
    grads = {"a": jnp.full(3, 0.5), "b": jnp.full(2, 0.25)}
    tx = optax.partition(
        {"adamx": CONFIGS[name](0.1), "sgd": optax.sgd(0.1)}, {"a": "adamx", "b": "sgd"}
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    alone = CONFIGS[name](0.1)
    expected, _ = alone.update(
        {"a": grads["a"]}, alone.init({"a": params["a"]}), {"a": params["a"]}
    )
    assert_bit_equal(updates["a"], expected["a"])
    np.testing.assert_allclose(updates["b"], -0.025)


@pytest.mark.parametrize("name", IDS)
def test_inside_optax_chain(name: str) -> None:
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([3.0, -0.5, 0.1])}
    tx = optax.chain(optax.clip(1.0), CONFIGS[name](0.1))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    alone = CONFIGS[name](0.1)
    expected, _ = alone.update({"w": jnp.clip(grads["w"], -1, 1)}, alone.init(params), params)
    assert_bit_equal(updates, expected)


CONTRIB: dict[str, Callable[[optax.GradientTransformation], optax.GradientTransformation]] = {
    "reduce_on_plateau": lambda tx: optax.chain(tx, optax.contrib.reduce_on_plateau(patience=5)),
    "schedule_free": lambda tx: optax.contrib.schedule_free(tx, learning_rate=0.05),
    "mechanize": lambda tx: optax.contrib.mechanize(tx, weight_decay=0.0),
}


@pytest.mark.parametrize("wrapper", list(CONTRIB))
@pytest.mark.parametrize("name", IDS)
def test_optax_contrib_wrappers_train(name: str, wrapper: str) -> None:
    """The wrapper gets the loss as `value` (reduce_on_plateau reads it; adamx ignores it)."""
    tx = CONTRIB[wrapper](CONFIGS[name](0.05))
    target = jnp.array([1.0, -2.0, 0.5])

    def loss(p: Any) -> jax.Array:
        return jnp.sum((p["w"] - target) ** 2)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        value, grads = jax.value_and_grad(lambda p: adamx.scale_loss(loss(p), state))(params)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    for _ in range(300):
        params, state = step(params, state)
    assert float(loss(params)) < 0.5 * float(loss({"w": jnp.zeros(3)}))


@pytest.mark.parametrize("name", IDS)
def test_state_survives_flatten_and_tree_helpers(name: str) -> None:
    tx = CONFIGS[name](0.1)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    leaves, treedef = jax.tree.flatten(state)
    assert_bit_equal(jax.tree.unflatten(treedef, leaves), state)
    assert int(optax.tree.get(state, "count")) == 0
    found = optax.tree_map_params(tx, lambda x: "param", state, transform_non_params=lambda _: "-")
    assert "param" in jax.tree.leaves(found)
    with pytest.raises(KeyError, match="learning_rate"):  # a rate the update does not read
        optax.tree.set(state, learning_rate=0.0)
