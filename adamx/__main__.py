"""`python -m adamx demo`: train a small MLP on synthetic two-spirals data with `adamx.adam`."""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx


def two_spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals in the plane: a classic non-linear binary classification task."""
    rng = np.random.default_rng(seed)
    turns = np.sqrt(rng.uniform(size=n)) * 3 * np.pi
    label = rng.integers(0, 2, size=n)
    sign = np.where(label == 1, 1.0, -1.0)
    x = np.stack([sign * turns * np.cos(turns), sign * turns * np.sin(turns)], axis=1) / (3 * np.pi)
    x += rng.normal(scale=0.02, size=x.shape)
    return x.astype(np.float32), label.astype(np.int32)


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> dict[str, Any]:
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        params[f"layer_{i}"] = {
            "kernel": jax.random.normal(sub, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in),
            "bias": jnp.zeros(fan_out),
        }
    return params


def logits_fn(params: dict[str, Any], x: jax.typing.ArrayLike) -> jax.Array:
    *hidden, last = params.values()
    for layer in hidden:
        x = jax.nn.gelu(x @ layer["kernel"] + layer["bias"])
    return x @ last["kernel"] + last["bias"]


def loss_fn(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def accuracy(params: dict[str, Any], x: jax.typing.ArrayLike, y: jax.typing.ArrayLike) -> float:
    return float(jnp.mean(jnp.argmax(logits_fn(params, x), axis=-1) == y))


def demo(steps: int, seed: int, batch_size: int = 128) -> dict[str, float]:
    x_train, y_train = two_spirals(4096, seed)
    x_eval, y_eval = two_spirals(1024, seed + 1)
    params = init_mlp(jax.random.key(seed), [2, 64, 64, 2])
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, steps // 10, steps, 1e-4)
    tx = adamx.adam(
        learning_rate=schedule,
        weight_decay=1e-4,
        global_clipnorm=1.0,
        use_ema=True,
        ema_momentum=0.99,
        exclude_from_weight_decay=["bias"],
    )
    state = tx.init(params)
    print(f"adamx {adamx.__version__} demo: two spirals, MLP 2-64-64-2, {steps} steps")
    print(f"decayed leaves: {', '.join(adamx.decayed_paths(params, ['bias']))}")

    @jax.jit
    def train_step(
        params: Any, state: Any, x: jax.Array, y: jax.Array
    ) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    report_every = max(steps // 10, 1)
    for step in range(1, steps + 1):
        batch = rng.integers(0, len(x_train), size=batch_size)
        params, state, loss = train_step(params, state, x_train[batch], y_train[batch])
        if step % report_every == 0 or step == steps:
            rate = float(adamx.current_learning_rate(state))
            print(f"  step {step:5d}  loss {float(loss):.4f}  next lr {rate:.2e}")
    elapsed = time.perf_counter() - start
    results = {
        "train_accuracy": accuracy(params, x_train, y_train),
        "eval_accuracy": accuracy(params, x_eval, y_eval),
        "eval_accuracy_ema": accuracy(adamx.ema_params(state), x_eval, y_eval),
        "seconds": elapsed,
    }
    print(
        f"done in {elapsed:.1f}s: train accuracy {results['train_accuracy']:.3f}, "
        f"eval accuracy {results['eval_accuracy']:.3f} "
        f"(EMA weights {results['eval_accuracy_ema']:.3f})"
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adamx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="train a small MLP with adamx.adam")
    demo_parser.add_argument("--steps", type=int, default=1500, help="training steps (>= 1)")
    demo_parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    demo(args.steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
