"""Fixtures and tolerances shared by the test suite.

Tolerances (how they were measured):

- KERAS_MOVEMENT_RTOL: jitted adamx against jitted Keras. Keras disagrees with itself between
  its op-by-op and its jitted execution (FMA contraction and scalar-division rewrites in
  XLA:CPU) by up to 1.1e-4 of the total parameter movement over 50 steps (the spec, 25 random
  configurations); we allow twice that, relative to the movement, so a learning-rate change
  scales the tolerance with it. `test_adam.py::test_tolerance_covers_keras_self_drift`
  re-measures the drift and fails if it ever exceeds this bound. In practice adamx has matched
  Keras bit for bit on every configuration tested so far.
- REFERENCE_RTOL: adamx in float32 against the float64 NumPy reference, relative to the largest
  |p| of the leaf (float32 rounding grows with the magnitude, about one ulp per step). Over 26
  configurations x 100 steps the largest drift measured was 5e-6 of max |p| (1.9e-6 at
  |p| <= 4); we allow 2e-5 of max |p|. The errors the reference exists to catch are far larger:
  optax's epsilon placement moves small-gradient steps by ~40%.
"""

from __future__ import annotations

from typing import Any

import jax
import keras
import numpy as np
import pytest
from harness import KerasRun, random_grads, random_params, run_adamx, run_keras

import adamx

KERAS_MOVEMENT_RTOL = 2.2e-4
REFERENCE_RTOL = 2e-5


def max_abs_diff(a: Any, b: Any) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        (float(np.max(np.abs(np.asarray(x, np.float64) - y), initial=0.0)) for x, y in pairs),
        default=0.0,
    )


def assert_close_to_keras(actual: Any, keras_params: Any, initial: Any) -> float:
    """Asserts agreement within KERAS_MOVEMENT_RTOL of the movement; returns the deviation."""
    deviation = max_abs_diff(actual, keras_params)
    movement = max_abs_diff(keras_params, initial)
    assert movement > 0, "the oracle did not move: the test would be vacuous"
    assert deviation <= KERAS_MOVEMENT_RTOL * movement, (
        f"deviation {deviation:.3e} exceeds {KERAS_MOVEMENT_RTOL} x movement {movement:.3e}"
    )
    return deviation


def assert_close_to_reference(actual: Any, reference_leaves: list[np.ndarray]) -> None:
    for x, y in zip(jax.tree.leaves(actual), reference_leaves, strict=True):
        atol = REFERENCE_RTOL * max(float(np.max(np.abs(y), initial=0.0)), 1.0)
        np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=0, atol=atol)


def assert_bit_equal(actual: Any, expected: Any) -> None:
    for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def check_against_keras(
    kwargs: dict[str, Any],
    params: Any,
    grads: list[Any],
    *,
    jit: bool = True,
    keras_kwargs: dict[str, Any] | None = None,
    exclude: list[str] | None = None,
) -> tuple[Any, Any, KerasRun]:
    """Runs `adamx.adam(**kwargs)` and Keras's `Adam` on the same inputs and compares the
    parameters (and the EMA, if on): jitted within tolerance, op by op bit for bit."""
    ours, state = run_adamx(adamx.adam(**kwargs), params, grads, jit=jit)
    optimizer = keras.optimizers.Adam(**(kwargs if keras_kwargs is None else keras_kwargs))
    theirs = run_keras(optimizer, params, grads, jit=jit, exclude_names=exclude)

    def compare(actual: Any, expected: Any) -> None:
        if jit:
            assert_close_to_keras(actual, expected, params)
        else:
            assert_bit_equal(actual, expected)

    compare(ours, theirs.params)
    if kwargs.get("use_ema"):
        compare(adamx.ema_params(state), theirs.slot(optimizer._model_variables_moving_average))
    return ours, state, theirs


@pytest.fixture
def params() -> Any:
    return random_params(0)


@pytest.fixture
def grads(params: Any) -> list[Any]:
    return random_grads(0, 100, params)
