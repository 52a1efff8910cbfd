"""Learning-rate forms: numbers, optax schedules, Keras schedules, zero-argument callables."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from harness import assert_close_to_keras, random_grads, run_adamx, run_keras

import adamx
from adamx._hyperparams import KerasLearningRateState
from adamx._state import find_state

schedules = keras.optimizers.schedules


# Rates read back from jitted updates against the schedule called eagerly: XLA evaluates
# `x / c` as `x * (1/c)` when compiled, so the two agree to 2 ulp, not bit for bit.
COMPILED_VS_EAGER_RTOL = 2.5e-7


def _rates_read_back(
    tx: optax.GradientTransformation, steps: int, read: Any = adamx.current_learning_rate
) -> list[float]:
    """`read(state)`, current_learning_rate by default, before each of `steps` jitted updates."""
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    rates = []
    for _ in range(steps):
        rates.append(float(read(state)))
        _, state = update({"w": jnp.ones(3)}, state, params)
    return rates


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ExponentialDecay(0.1, 3, 0.5),
        schedules.ExponentialDecay(0.1, 3, 0.5, staircase=True),
        schedules.PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01]),
        schedules.PolynomialDecay(0.1, 8, 0.01, power=2.0),
        schedules.InverseTimeDecay(0.1, 2, 0.3),
        schedules.CosineDecay(0.01, 10, warmup_target=0.1, warmup_steps=3),
        schedules.CosineDecayRestarts(0.1, 4),
    ],
    ids=lambda s: type(s).__name__,
)
def test_keras_schedules_are_read_at_keras_counter(schedule: Any) -> None:
    expected = [float(schedule(step)) for step in range(10)]
    rates = _rates_read_back(adamx.adam(schedule), 10)
    np.testing.assert_allclose(rates, expected, rtol=COMPILED_VS_EAGER_RTOL)


def test_optax_schedule_and_float() -> None:
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10)
    expected = [float(schedule(step)) for step in range(10)]
    rates = _rates_read_back(adamx.adam(schedule), 10)
    # 1 - cos(...) cancels near the end: compare to 2 ulp of the peak rate.
    np.testing.assert_allclose(rates, expected, rtol=0, atol=COMPILED_VS_EAGER_RTOL * 0.1)
    assert _rates_read_back(adamx.adam(0.1), 2) == [float(np.float32(0.1))] * 2


def test_accumulation_reads_the_schedule_at_the_raw_counter() -> None:
    # With N = 3, real update k (1-based) happens on call 3k, where Keras's counter is 3k - 1.
    schedule = optax.exponential_decay(0.1, 1, 0.5)
    tx = adamx.adam(schedule, gradient_accumulation_steps=3)
    rates = _rates_read_back(tx, 7, lambda state: optax.tree.get(state, "next_learning_rate"))
    expected_next_update = (
        [float(schedule(2))] * 3 + [float(schedule(5))] * 3 + [float(schedule(8))]
    )
    np.testing.assert_allclose(rates, expected_next_update, rtol=COMPILED_VS_EAGER_RTOL)


def test_zero_argument_callable_is_called_each_step_eagerly_and_frozen_under_jit() -> None:
    box = {"rate": 0.1}
    tx = adamx.adam(lambda: box["rate"])
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
    box["rate"] = 0.2
    eager_step, _ = tx.update({"w": jnp.ones(2)}, state, params)
    jitted = jax.jit(tx.update)
    jitted({"w": jnp.ones(2)}, state, params)  # traced with 0.2
    box["rate"] = 0.4
    frozen_step, _ = jitted({"w": jnp.ones(2)}, state, params)
    np.testing.assert_array_equal(frozen_step["w"], eager_step["w"])  # Keras freezes it too


# Injected as arrays, betas would have `1 - beta` rounded in float32 (Keras does the same with
# array betas); keeping them static keeps Keras's bits.
STATIC = ("beta_1", "beta_2", "epsilon", "ema_momentum")


def test_inject_hyperparams_changes_the_rate_without_recompiling() -> None:
    tx = optax.inject_hyperparams(adamx.adam, static_args=STATIC)(learning_rate=0.1)
    params = {"w": jnp.array([1.0, -1.0])}
    grads = {"w": jnp.array([0.3, -2.0])}
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(state: Any) -> tuple[Any, Any]:
        traces.append(None)
        return tx.update(grads, state, params)

    first, state = step(state)
    assert float(adamx.current_learning_rate(state)) == pytest.approx(0.1)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05, jnp.float32)
    second, state = step(state)
    assert len(traces) == 1
    assert float(adamx.current_learning_rate(state)) == pytest.approx(0.05)

    # The oracle: Keras with the rate changed between the two calls.
    variable = keras.Variable(np.asarray(params["w"]), name="w")
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.apply_gradients([(np.asarray(grads["w"]), variable)])
    after_first = np.asarray(variable.value)
    optimizer.learning_rate = 0.05
    optimizer.apply_gradients([(np.asarray(grads["w"]), variable)])
    np.testing.assert_array_equal(params["w"] + first["w"], after_first)
    np.testing.assert_array_equal(after_first + second["w"], np.asarray(variable.value))


def test_plain_inject_hyperparams_works_close_to_keras(params: Any, grads: list[Any]) -> None:
    """The literal `optax.inject_hyperparams(adamx.adam)(learning_rate=...)`: every number is
    injected, so betas are float32 arrays and `1 - beta` rounds in float32, as Keras does for
    array betas; the result stays within the Keras tolerance of Keras with float betas."""
    tx = optax.inject_hyperparams(adamx.adam)(learning_rate=0.01)
    ours, state = run_adamx(tx, params, grads)
    theirs = run_keras(keras.optimizers.Adam(0.01), params, grads)
    assert_close_to_keras(ours, theirs.params, params)
    assert float(adamx.current_learning_rate(state)) == pytest.approx(0.01)


def test_update_without_params_when_nothing_needs_them() -> None:
    tx = adamx.adam(0.1, amsgrad=True, global_clipnorm=1.0, gradient_accumulation_steps=2)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    for _ in range(2):
        updates, state = jax.jit(tx.update)({"w": jnp.array([0.5, -0.5])}, state)
    # First Adam step in closed form, with the spec's rounding of hyper-parameters: betas are
    # rounded to float32 before the power, `1 - beta` is rounded after a double subtraction.
    f32 = np.float32
    m, root_v = float(f32(0.1)) * 0.5, np.sqrt(float(f32(0.001)) * 0.25)
    alpha = float(f32(0.1)) * np.sqrt(1 - float(f32(0.999))) / (1 - float(f32(0.9)))
    expected = m * alpha / (root_v + float(f32(1e-7)))
    np.testing.assert_allclose(updates["w"], [-expected, expected], rtol=1e-6)


class _OptaxInKeras(schedules.LearningRateSchedule):  # type: ignore[misc]
    """How a Keras user runs an optax schedule: wrapped as a Keras schedule."""

    def __init__(self, schedule: optax.Schedule) -> None:
        self.schedule = schedule

    def __call__(self, step: Any) -> Any:
        return self.schedule(step)


KERAS_SCHEDULES = {
    "ExponentialDecay": schedules.ExponentialDecay(0.02, 4, 0.6),
    "ExponentialDecay/staircase": schedules.ExponentialDecay(0.02, 4, 0.6, staircase=True),
    "PiecewiseConstantDecay": schedules.PiecewiseConstantDecay([3, 9], [0.02, 0.01, 0.002]),
    "PolynomialDecay": schedules.PolynomialDecay(0.02, 10, 0.001, power=2.0),
    "PolynomialDecay/cycle": schedules.PolynomialDecay(0.02, 5, 0.001, cycle=True),
    "InverseTimeDecay": schedules.InverseTimeDecay(0.02, 3, 0.5),
    "CosineDecay/warmup": schedules.CosineDecay(
        0.001, 10, alpha=0.1, warmup_target=0.02, warmup_steps=4
    ),
    "CosineDecayRestarts": schedules.CosineDecayRestarts(0.02, 3, t_mul=2.0, m_mul=0.5),
    "optax.warmup_cosine_decay_schedule": optax.warmup_cosine_decay_schedule(0.0, 0.02, 4, 14),
    "optax.join_schedules": optax.join_schedules(
        [optax.linear_schedule(0.0, 0.02, 5), optax.exponential_decay(0.02, 3, 0.5)], [5]
    ),
    "optax.piecewise_constant_schedule": optax.piecewise_constant_schedule(0.02, {4: 0.5, 10: 0.1}),
}


@pytest.mark.parametrize("name", list(KERAS_SCHEDULES))
def test_rates_and_parameters_follow_keras_step_by_step(name: str, params: Any) -> None:
    """Keras's `optimizer.learning_rate` after each step (eager Keras, the user's view) against
    `current_learning_rate(state)` after each jitted adamx step; then the parameters."""
    schedule = KERAS_SCHEDULES[name]
    grads = random_grads(1, 16, params)
    keras_schedule = (
        schedule if callable(getattr(schedule, "get_config", None)) else (_OptaxInKeras(schedule))
    )
    optimizer = keras.optimizers.Adam(keras_schedule)
    variables = [keras.Variable(np.asarray(p)) for p in jax.tree.leaves(params)]
    tx = adamx.adam(schedule)
    state = tx.init(params)
    step = jax.jit(tx.update)
    keras_rates, our_rates, ours = [], [], params
    for g in grads:
        keras_rates.append(float(optimizer.learning_rate))
        our_rates.append(float(adamx.current_learning_rate(state)))
        optimizer.apply_gradients(zip(jax.tree.leaves(g), variables, strict=True))
        updates, state = step(g, state, ours)
        ours = optax.apply_updates(ours, updates)
    assert len(set(keras_rates)) > 2, "the schedule did not change the rate"
    # Cosines cancel near their ends: 2 ulp of the peak rate there.
    atol = COMPILED_VS_EAGER_RTOL * max(keras_rates)
    np.testing.assert_allclose(our_rates, keras_rates, rtol=COMPILED_VS_EAGER_RTOL, atol=atol)
    theirs = jax.tree.unflatten(jax.tree.structure(params), [np.asarray(v) for v in variables])
    assert_close_to_keras(ours, theirs, params)


@pytest.mark.parametrize("steps", [2, 3])
def test_current_learning_rate_is_kerass_property_during_accumulation(
    steps: int, params: Any
) -> None:
    """Keras's `optimizer.learning_rate` reads the schedule at the raw counter, which
    micro-steps advance; so does `current_learning_rate`, call by call."""
    schedule = keras.optimizers.schedules.ExponentialDecay(0.02, 2, 0.5)
    optimizer = keras.optimizers.Adam(schedule, gradient_accumulation_steps=steps)
    variables = [keras.Variable(np.asarray(p)) for p in jax.tree.leaves(params)]
    tx = adamx.adam(schedule, gradient_accumulation_steps=steps)
    state, step = tx.init(params), jax.jit(tx.update)
    keras_rates, our_rates, next_rates = [], [], []
    for g in random_grads(2, 4 * steps, params):
        keras_rates.append(float(optimizer.learning_rate))
        our_rates.append(float(adamx.current_learning_rate(state)))
        next_rates.append(float(optax.tree.get(state, "next_learning_rate")))
        optimizer.apply_gradients(zip(jax.tree.leaves(g), variables, strict=True))
        _, state = step(g, state, params)
    assert len(set(keras_rates)) == len(keras_rates)  # a new rate on every call
    np.testing.assert_allclose(our_rates, keras_rates, rtol=COMPILED_VS_EAGER_RTOL)
    # The next real update (call k*N) reads the schedule at k*N - 1.
    expected_next = [float(schedule((call // steps + 1) * steps - 1)) for call in range(4 * steps)]
    np.testing.assert_allclose(next_rates, expected_next, rtol=COMPILED_VS_EAGER_RTOL)


def test_current_learning_rate_with_accumulation_and_a_constant_rate(params: Any) -> None:
    """A constant rate adds no state: Keras's `optimizer.learning_rate` is the constant on every
    call, and so is `current_learning_rate`."""
    optimizer = keras.optimizers.Adam(0.03, gradient_accumulation_steps=3)
    tx = adamx.adam(0.03, gradient_accumulation_steps=3)
    state, step = tx.init(params), jax.jit(tx.update)
    assert find_state(state, KerasLearningRateState) is None
    for g in random_grads(3, 5, params):
        assert float(adamx.current_learning_rate(state)) == float(optimizer.learning_rate)
        _, state = step(g, state, params)
