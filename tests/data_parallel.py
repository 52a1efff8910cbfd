"""A small transformer language model trained data-parallel with adamx: shared by the ZeRO
checks on simulated devices (`zero_check.py`) and the two-process run (`multiprocess_worker.py`).

Imports JAX but touches no device at import, so a worker can call `jax.distributed.initialize`
first.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx

VOCAB, WIDTH, LAYERS, SEQUENCE, BATCH = 256, 128, 2, 32, 16
# The configuration of the check: EMA, accumulation and global clipping on.
OPTIMIZER = {"learning_rate": 3e-3, "use_ema": True, "gradient_accumulation_steps": 2}


def make_tx(clip: bool) -> optax.GradientTransformation:
    return adamx.adam(**OPTIMIZER, global_clipnorm=1.0 if clip else None)


def init_params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def dense(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    layer = lambda: {  # noqa: E731
        "qkv": dense(WIDTH, 3 * WIDTH),
        "out": dense(WIDTH, WIDTH),
        "up": dense(WIDTH, 4 * WIDTH),
        "up_bias": np.zeros(4 * WIDTH, np.float32),
        "down": dense(4 * WIDTH, WIDTH),
        "norm": np.ones(WIDTH, np.float32),
    }
    return {"embed": dense(VOCAB, WIDTH), "layers": [layer() for _ in range(LAYERS)]}


def _norm(h: jax.Array, scale: jax.Array) -> jax.Array:
    return scale * (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5)


def loss_fn(params: Any, tokens: jax.Array) -> jax.Array:
    """Next-token cross-entropy of a causal transformer (one head; weights tied to the output)."""
    h = params["embed"][tokens[:, :-1]]
    causal = jnp.tril(jnp.ones((SEQUENCE - 1, SEQUENCE - 1), bool))
    for layer in params["layers"]:
        q, k, v = jnp.split(_norm(h, layer["norm"]) @ layer["qkv"], 3, axis=-1)
        scores = jnp.where(causal, q @ k.swapaxes(1, 2) / np.sqrt(WIDTH), -1e9)
        h = h + (jax.nn.softmax(scores) @ v) @ layer["out"]
        h = h + jax.nn.gelu(h @ layer["up"] + layer["up_bias"]) @ layer["down"]
    logits = h @ params["embed"].T
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def batches(seed: int, steps: int) -> np.ndarray:
    """Token batches with structure to learn: each sequence counts up from a random start."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (steps, BATCH, 1))
    return ((start + np.arange(SEQUENCE)) % VOCAB).astype(np.int32)


def make_step(tx: optax.GradientTransformation, out_shardings: Any = None) -> Any:
    """A jitted train step returning (params, state, loss), laid out as `out_shardings` says."""

    def step(params: Any, state: Any, tokens: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return jax.jit(step, donate_argnums=(0, 1), out_shardings=out_shardings)


def zero_layout(tx: optax.GradientTransformation, mesh: Mesh) -> tuple[Any, NamedSharding]:
    """The train step's outputs' shardings (replicated parameters, state split over the `data`
    axis, replicated loss) and the batch's (split over `data`)."""
    shapes = jax.eval_shape(lambda: init_params(0))
    replicated = NamedSharding(mesh, P())
    params = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )
    params_sharding = jax.tree.map(lambda _: replicated, shapes)
    state_sharding = adamx.state_shardings(tx, params, shard_over="data")
    return (params_sharding, state_sharding, replicated), NamedSharding(mesh, P("data"))
