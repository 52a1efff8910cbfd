"""Complex parameters, as optax's Adam trains them: moments of `g` and of `|g|**2`.

Keras has no complex variables, so the oracle is a float64 NumPy reference of the formula in
`adamx.scale_by_keras_adam` with `g**2` read as `|g|**2`, and the real case embedded in the
complex plane.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_bit_equal, run_adamx

import adamx
from adamx._state import find_state

try:
    from jax import enable_x64
except ImportError:  # older JAX (0.5) has only `jax.experimental.enable_x64`, since removed
    from jax.experimental import enable_x64  # type: ignore[attr-defined,no-redef]

STEPS = 20
# float32 arithmetic against the float64 reference, relative to the largest |p|: the same
# drift as for real parameters (harness.REFERENCE_RTOL), measured here at 6e-7 over 20 steps.
RTOL = 2e-5


def complex_problem(seed: int) -> tuple[Any, list[Any]]:
    rng = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)

    params = {"z": draw((3, 4)), "w": draw((5,))}
    return params, [{k: draw(v.shape) for k, v in params.items()} for _ in range(STEPS)]


def reference(
    params: Any, grads: list[Any], lr: float, amsgrad: bool, global_clipnorm: float | None
) -> Any:
    """float64 Keras-form Adam with `|g|**2`, global clipping by `sqrt(sum |g|**2)`."""
    b1, b2, eps = 0.9, 0.999, 1e-7
    p = {k: np.complex128(v) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros(x.shape) for k, x in p.items()}
    v_hat = {k: np.zeros(x.shape) for k, x in p.items()}
    for t, g in enumerate(grads, start=1):
        g = {k: np.complex128(x) for k, x in g.items()}
        if global_clipnorm is not None:
            norm = np.sqrt(sum(np.sum(np.abs(x) ** 2) for x in g.values()))
            g = {k: x * global_clipnorm * min(1 / norm, 1 / global_clipnorm) for k, x in g.items()}
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        for k in p:
            m[k] = m[k] + (g[k] - m[k]) * (1 - b1)
            v[k] = v[k] + (np.abs(g[k]) ** 2 - v[k]) * (1 - b2)
            v_hat[k] = np.maximum(v_hat[k], v[k])
            p[k] = p[k] - m[k] * alpha / (np.sqrt(v_hat[k] if amsgrad else v[k]) + eps)
    return p


CASES = {
    "default": {},
    "amsgrad": {"amsgrad": True},
    "global_clipnorm": {"global_clipnorm": 0.5},
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_complex_reference(name: str) -> None:
    kwargs = CASES[name]
    params, grads = complex_problem(1)
    ours, state = run_adamx(adamx.adam(0.05, **kwargs), params, grads)
    expected = reference(
        params, grads, 0.05, kwargs.get("amsgrad", False), kwargs.get("global_clipnorm")
    )
    for key, value in expected.items():
        assert ours[key].dtype == np.complex64
        moved = np.max(np.abs(value - params[key]))
        assert moved > 0.1  # the comparison is not vacuous
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=RTOL * np.max(np.abs(value)))
    moments = jax.tree.leaves(find_state(state, adamx.ScaleByKerasAdamState).nu)
    assert all(leaf.dtype == np.float32 for leaf in moments)  # |g|**2 is real: half the bytes


@pytest.mark.parametrize(
    "kwargs",
    [  # (Nesterov's complex quotients by the bias corrections can move a last bit)
        {},
        {"amsgrad": True},
        {"weight_decay": 0.1, "use_ema": True},
        {"global_clipnorm": 0.5, "gradient_accumulation_steps": 2},
    ],
    ids=str,
)
def test_a_real_problem_embedded_in_the_complex_plane_keeps_its_bits(kwargs: Any) -> None:
    """Zero imaginary parts stay zero, and the real parts are the real run's, bit for bit when
    both run op by op (compiled, XLA contracts complex and real products differently: 1 ulp)."""
    rng = np.random.default_rng(2)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32)}
    grads = [{"w": rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(10)]
    tx = adamx.adam(0.05, **kwargs)
    real, _ = run_adamx(tx, params, grads, jit=False)
    as_complex = lambda tree: jax.tree.map(lambda x: x.astype(np.complex64), tree)  # noqa: E731
    embedded, _ = run_adamx(tx, as_complex(params), [as_complex(g) for g in grads], jit=False)
    assert_bit_equal(np.real(embedded["w"]), real["w"])
    np.testing.assert_array_equal(np.imag(embedded["w"]), 0.0)


def test_complex_parameters_converge_on_a_parabola() -> None:
    """`f(z) = sum |z - c|**2`; JAX's gradient of a real function of `z` is the conjugate of
    the steepest-ascent direction, so the step takes `conj(grad)`, as optax's docs say."""
    c = jnp.array([1.0 - 2.0j, -0.5 + 0.25j])
    tx = adamx.adam(0.05)
    z = jnp.zeros(2, jnp.complex64)
    state = tx.init(z)
    loss = lambda z: jnp.sum(jnp.abs(z - c) ** 2)  # noqa: E731
    for _ in range(400):
        updates, state = tx.update(jnp.conj(jax.grad(loss)(z)), state, z)
        z = optax.apply_updates(z, updates)
    np.testing.assert_allclose(z, c, atol=1e-3)


def test_narrow_moments_with_a_rounding_seed_round_complex_values_to_nearest() -> None:
    """complex128 parameters with bfloat16 moments: `m` is stored complex64 (rounded to
    nearest, the rule for complex values) and `v` bfloat16 (rounded stochastically); the
    result agrees with the float64 reference to bfloat16's precision."""
    with enable_x64(True):
        params = jnp.asarray([1.0 + 2.0j, -0.5 + 0.25j], jnp.complex128)
        tx = adamx.adam(0.1, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, rounding_seed=0)
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(params, state, params)
        adam_state = find_state(state, adamx.ScaleByKerasAdamState)
        assert adam_state.mu.dtype == jnp.complex64 and adam_state.nu.dtype == jnp.bfloat16
        # First step from zero moments: m = 0.1 g, v = 0.001 |g|^2, so the step is
        # lr * sqrt(0.001) / 0.1 * g / |g| = lr * g / |g| (epsilon aside), g = params.
        expected = -0.1 * np.asarray(params) / np.abs(np.asarray(params))
        np.testing.assert_allclose(np.asarray(updates), expected, rtol=2.0**-7)
