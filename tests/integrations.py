"""A small teacher-student regression task shared by the integration tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IN, HIDDEN, OUT = 4, 32, 2


def teacher_data(seed: int = 0, n: int = 256) -> tuple[jax.Array, jax.Array]:
    """Inputs and the outputs of a fixed random tanh network: a task a small MLP can fit."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, IN)).astype(np.float32)
    w1 = rng.standard_normal((IN, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, OUT)).astype(np.float32) / 4
    return jnp.asarray(x), jnp.asarray(np.tanh(x @ w1) @ w2)


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((prediction.astype(jnp.float32) - target) ** 2)
