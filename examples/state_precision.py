"""Does storing Adam's state (or the parameters) in fewer bits cost accuracy? Real training says.

Trains, for each precision policy and seed, the same two models on real data that ships with
Python and matplotlib (nothing is downloaded):

- `text`: a character-level transformer language model on the Python standard library's own
  `.py` sources (every tenth file held out for validation);
- `image`: a coordinate network (Fourier features and an MLP) that learns the photograph of
  Grace Hopper shipped in matplotlib's sample data from 1 pixel in 4, scored on the other 3.

and reports the final validation loss (mean and spread over seeds), the optimizer state's bytes
per parameter (counted from the state pytree) and the median step time against float32 state,
all measured in this one run. (Tensors under 4096 elements keep float32 moments under "8-bit
moments", as in bitsandbytes: on these small models that is most of the bytes.) Run it with

    python examples/state_precision.py --out precision-out

(about 10 minutes on 2 CPU cores; `--help` for fewer steps, seeds, tasks or policies). It writes
`results.json`, `results.md` (the table) and `curves.png` (validation loss against steps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx


class Policy(NamedTuple):
    """A precision policy: `adam` keywords, the parameters' storage dtype, the compute dtype."""

    adam_kwargs: dict[str, Any]
    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32


BF16 = jnp.bfloat16
F32_MOMENTS = {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32}
POLICIES: dict[str, Callable[[int], Policy]] = {
    "float32 state": lambda seed: Policy({}),
    "bfloat16 state, nearest": lambda seed: Policy({"mu_dtype": BF16, "nu_dtype": BF16}),
    "bfloat16 state, stochastic": lambda seed: Policy(
        {"mu_dtype": BF16, "nu_dtype": BF16, "rounding_seed": seed}
    ),
    "8-bit moments": lambda seed: Policy({"mu_dtype": "8bit", "nu_dtype": "8bit"}),
    # Parameters in bfloat16, computing in bfloat16; the moments stay float32 in all three.
    "float32 master weights": lambda seed: Policy({}, compute_dtype=BF16),
    "bfloat16 params, nearest": lambda seed: Policy(F32_MOMENTS, BF16, BF16),
    "bfloat16 params, stochastic": lambda seed: Policy(
        {**F32_MOMENTS, "rounding_seed": seed}, BF16, BF16
    ),
}


class Task(NamedTuple):
    """A model and its data: `loss(params, batch, compute_dtype)` and its batches."""

    init: Callable[[np.random.Generator], Any]
    loss: Callable[[Any, Any, Any], jax.Array]
    train_batch: Callable[[np.random.Generator], Any]
    val_batches: list[Any]
    learning_rate: float


def _dense(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    return (rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32)


def _norm(x: jax.Array, scale: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = (x32 - x32.mean(-1, keepdims=True)) * jax.lax.rsqrt(x32.var(-1, keepdims=True) + 1e-5)
    return (normed * scale).astype(x.dtype)


WIDTH, HEADS, LAYERS, CONTEXT, BATCH = 64, 4, 2, 64, 32


def text_task() -> Task:
    """A character-level transformer on the standard library's `.py` files (bytes as tokens)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    data = {
        split: np.frombuffer(b"\n".join(f.read_bytes() for f in chosen), np.uint8)
        for split, chosen in (
            ("train", [f for i, f in enumerate(files) if i % 10]),
            ("val", files[::10]),
        )
    }

    def init(rng: np.random.Generator) -> Any:
        layer = lambda: {  # noqa: E731
            "qkv": _dense(rng, WIDTH, 3 * WIDTH),
            "out": _dense(rng, WIDTH, WIDTH) / np.sqrt(2 * LAYERS),
            "up": _dense(rng, WIDTH, 4 * WIDTH),
            "down": _dense(rng, 4 * WIDTH, WIDTH) / np.sqrt(2 * LAYERS),
            "norm1": np.ones(WIDTH, np.float32),
            "norm2": np.ones(WIDTH, np.float32),
        }
        return {
            "embed": (0.1 * rng.standard_normal((256, WIDTH))).astype(np.float32),
            "position": (0.1 * rng.standard_normal((CONTEXT, WIDTH))).astype(np.float32),
            "layers": [layer() for _ in range(LAYERS)],
            "norm": np.ones(WIDTH, np.float32),
        }

    def batch(rng: np.random.Generator, split: str = "train") -> np.ndarray:
        starts = rng.integers(0, len(data[split]) - CONTEXT - 1, BATCH)
        return np.stack([data[split][s : s + CONTEXT + 1] for s in starts]).astype(np.int32)

    val_rng = np.random.default_rng(1234)
    return Task(init, _lm_loss, batch, [batch(val_rng, "val") for _ in range(16)], 3e-3)


def _lm_loss(params: Any, tokens: jax.Array, dtype: Any) -> jax.Array:
    p = jax.tree.map(lambda x: x.astype(dtype), params)
    b, t = tokens.shape[0], tokens.shape[1] - 1
    x = p["embed"][tokens[:, :-1]] + p["position"][:t]
    causal = jnp.tril(jnp.ones((t, t), bool))
    for layer in p["layers"]:
        q, k, v = jnp.split(_norm(x, layer["norm1"]) @ layer["qkv"], 3, axis=-1)
        q, k, v = (a.reshape(b, t, HEADS, WIDTH // HEADS) for a in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(WIDTH // HEADS)
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9)).astype(dtype)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, WIDTH) @ layer["out"]
        x = x + jax.nn.gelu(_norm(x, layer["norm2"]) @ layer["up"]) @ layer["down"]
    logits = (_norm(x, p["norm"]) @ p["embed"].T).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def image_task() -> Task:
    """A coordinate network fitting matplotlib's photograph of Grace Hopper (128 x 150, RGB)
    from the pixels at even rows and columns; validated on all the others."""
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        image = np.asarray(Image.open(f).convert("RGB").resize((128, 150)), np.float32) / 255
    rows, cols = np.meshgrid(np.arange(150), np.arange(128), indexing="ij")
    coords = np.stack([rows / 150, cols / 128], -1).astype(np.float32)
    train = (rows % 2 == 0) & (cols % 2 == 0)
    frequencies = (10.0 * np.random.default_rng(0).standard_normal((2, 64))).astype(np.float32)

    def init(rng: np.random.Generator) -> Any:
        sizes = [128, 256, 256, 3]
        return [
            {"w": _dense(rng, m, n), "b": np.zeros(n, np.float32)}
            for m, n in itertools.pairwise(sizes)
        ]

    def loss(params: Any, batch: Any, dtype: Any) -> jax.Array:
        x, y = batch
        h = jnp.concatenate([jnp.sin(x @ frequencies), jnp.cos(x @ frequencies)], -1).astype(dtype)
        for i, layer in enumerate(params):
            h = h @ layer["w"].astype(dtype) + layer["b"].astype(dtype)
            h = jax.nn.relu(h) if i < len(params) - 1 else h
        return jnp.mean((jax.nn.sigmoid(h.astype(jnp.float32)) - y) ** 2)

    train_x, train_y = coords[train], image[train]

    def batch(rng: np.random.Generator) -> Any:
        pick = rng.integers(0, len(train_x), 1024)
        return train_x[pick], train_y[pick]

    return Task(init, loss, batch, [(coords[~train], image[~train])], 2e-3)


TASKS = {"text": text_task, "image": image_task}


class Run(NamedTuple):
    curve: list[tuple[int, float]]  # (step, validation loss)
    state_bytes_per_param: float
    step_seconds: float  # median


def train(task: Task, policy: Policy, seed: int, steps: int, evals: int = 10) -> Run:
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(x, policy.param_dtype), task.init(rng))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, task.learning_rate, steps // 20, steps, task.learning_rate / 10
    )
    tx = adamx.adam(learning_rate=schedule, **policy.adam_kwargs)
    state = tx.init(params)
    count = sum(x.size for x in jax.tree.leaves(params))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim) / count

    @jax.jit
    def step(params: Any, state: Any, batch: Any) -> tuple[Any, Any]:
        grads = jax.grad(task.loss)(params, batch, policy.compute_dtype)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    evaluate = jax.jit(lambda p, b: task.loss(p, b, policy.compute_dtype))
    curve, times = [], []
    for i in range(steps + 1):
        if i % max(steps // evals, 1) == 0 or i == steps:
            val = np.mean([float(evaluate(params, b)) for b in task.val_batches])
            curve.append((i, float(val)))
        if i < steps:
            start = time.perf_counter()
            params, state = jax.block_until_ready(step(params, state, task.train_batch(rng)))
            times.append(time.perf_counter() - start)
    return Run(curve, state_bytes, float(np.median(times[5:] or times)))


def table(results: dict[str, dict[str, list[Run]]]) -> str:
    """Markdown: final validation loss (mean ± std over seeds), against float32 state."""
    lines = []
    for task, by_policy in results.items():
        base = by_policy.get("float32 state")
        base_loss = np.mean([r.curve[-1][1] for r in base]) if base else np.nan
        base_time = np.mean([r.step_seconds for r in base]) if base else np.nan
        lines += [
            f"\n**{task}** ({len(next(iter(by_policy.values())))} seeds)\n",
            "| policy | final val loss | vs float32 state | state bytes/param | step time |",
            "|---|---|---|---|---|",
        ]
        for name, runs in by_policy.items():
            finals = [r.curve[-1][1] for r in runs]
            seconds = np.mean([r.step_seconds for r in runs])
            lines.append(
                f"| {name} | {np.mean(finals):.5g} ± {np.std(finals):.2g} "
                f"| {np.mean(finals) / base_loss - 1:+.2%} "
                f"| {np.mean([r.state_bytes_per_param for r in runs]):.2f} "
                f"| {seconds * 1e3:.1f} ms ({seconds / base_time:.2f}x) |"
            )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, list[Run]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (task, by_policy) in zip(axes[0], results.items(), strict=True):
        for name, runs in by_policy.items():
            steps = [s for s, _ in runs[0].curve]
            ax.plot(steps, np.mean([[v for _, v in r.curve] for r in runs], 0), label=name)
        ax.set(title=task, xlabel="step", ylabel="validation loss (mean over seeds)")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("precision-out"), help="output folder")
    parser.add_argument("--steps", type=int, default=800, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per policy")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument(
        "--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES), metavar="POLICY"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[Run]]] = {}
    for task_name in args.tasks:
        task = TASKS[task_name]()
        results[task_name] = {name: [] for name in args.policies}
        for seed in range(args.seeds):
            for name in args.policies:
                run = train(task, POLICIES[name](seed), seed, args.steps)
                results[task_name][name].append(run)
                print(
                    f"{task_name} | {name} | seed {seed}: val loss {run.curve[-1][1]:.4f}, "
                    f"{run.step_seconds * 1e3:.1f} ms/step",
                    flush=True,
                )
    text = f"{jax.devices()[0].device_kind}, {args.steps} steps\n" + table(results)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                t: {p: [r._asdict() for r in rs] for p, rs in by.items()}
                for t, by in results.items()
            },
            indent=1,
        )
    )
    plot(results, args.out / "curves.png")


if __name__ == "__main__":
    main()
