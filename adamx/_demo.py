"""The demo: a Flax NNX classifier on two spirals, trained with `adamx.adam`, optionally beside
Keras's `Adam` on the same weights and batches. Needs the `demo` extra (flax, matplotlib, keras)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adamx

# Jitted adamx against jitted Keras: the largest parameter deviation allowed, as a fraction of
# the largest parameter movement. Twice the drift between Keras's own eager and jitted runs
# (the test suite uses the same bound and re-measures that drift).
KERAS_TOLERANCE = 2.2e-4
HIDDEN = 64
BATCH = 128


def two_spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved noisy spirals in the plane, labelled 0 and 1."""
    rng = np.random.default_rng(seed)
    turns = np.sqrt(rng.uniform(size=n)) * 3 * np.pi
    label = rng.integers(0, 2, size=n)
    sign = np.where(label == 1, 1.0, -1.0)
    x = np.stack([sign * turns * np.cos(turns), sign * turns * np.sin(turns)], axis=1) / (3 * np.pi)
    x += rng.normal(scale=0.02, size=x.shape)
    return x.astype(np.float32), label.astype(np.int32)


class MLP(nnx.Module):
    """2 -> 64 -> 64 -> 2, tanh."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden1 = nnx.Linear(2, HIDDEN, rngs=rngs)
        self.hidden2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden2(jnp.tanh(self.hidden1(x)))))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def optimizer_settings(steps: int) -> dict[str, Any]:
    """A realistic mix: warm-up then cosine decay, decoupled weight decay (not on biases),
    global-norm clipping and an EMA of the weights."""
    return {
        "learning_rate": optax.warmup_cosine_decay_schedule(0.0, 0.01, steps // 10, steps, 1e-4),
        "weight_decay": 1e-4,
        "global_clipnorm": 1.0,
        "use_ema": True,
        "ema_momentum": 0.99,
    }


class KerasTwin:
    """The same network in Keras, with Keras's `Adam`, stepped by `stateless_apply` as `fit`
    does; it starts from the Flax weights and sees the same batches."""

    def __init__(self, params: nnx.State, settings: dict[str, Any]) -> None:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import keras

        if keras.backend.backend() != "jax":
            raise SystemExit("--compare-keras needs Keras on the JAX backend: KERAS_BACKEND=jax")
        layers = [
            keras.layers.Dense(HIDDEN, activation="tanh", name="hidden1"),
            keras.layers.Dense(HIDDEN, activation="tanh", name="hidden2"),
            keras.layers.Dense(2, name="out"),
        ]
        self.model = keras.Sequential([keras.Input((2,)), *layers])
        pure = nnx.to_pure_dict(params)
        for layer in layers:
            layer.set_weights([np.asarray(pure[layer.name][k]) for k in ("kernel", "bias")])

        class OptaxSchedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step: Any) -> Any:
                return settings["learning_rate"](step)

        self.optimizer = keras.optimizers.Adam(**{**settings, "learning_rate": OptaxSchedule()})
        self.optimizer.exclude_from_weight_decay(var_names=["bias"])
        self.optimizer.build(self.model.trainable_variables)
        self.values = [v.value for v in self.model.trainable_variables]
        self.initial = self.as_tree(self.values)
        self.opt_values = [v.value for v in self.optimizer.variables]
        self.step = jax.jit(self._step)

    def _step(self, values: list[Any], opt_values: list[Any], x: Any, y: Any) -> Any:
        def loss_fn(values: list[Any]) -> jax.Array:
            logits, _ = self.model.stateless_call(values, [], x)
            return cross_entropy(logits, y)

        return self.optimizer.stateless_apply(opt_values, jax.grad(loss_fn)(values), values)

    def train_step(self, x: Any, y: Any) -> None:
        self.values, self.opt_values = self.step(self.values, self.opt_values, x, y)

    def as_tree(self, values: list[Any]) -> dict[str, Any]:
        """Keras values as the Flax layout: {"hidden1": {"kernel": ..., "bias": ...}, ...}."""
        tree: dict[str, Any] = {}
        for variable, value in zip(self.model.trainable_variables, values, strict=True):
            layer, name = variable.path.split("/")[-2:]
            tree.setdefault(layer, {})[name] = np.asarray(value)
        return tree

    def as_state(self, like: nnx.State) -> nnx.State:
        """Keras's current weights as an `nnx.State` with the structure of `like`."""
        state = jax.tree.map(lambda x: x, like)
        nnx.replace_by_pure_dict(state, self.as_tree(self.values))
        return state

    def ema(self) -> dict[str, Any]:
        averages = self.optimizer._model_variables_moving_average
        index = {id(v): i for i, v in enumerate(self.optimizer.variables)}
        return self.as_tree([self.opt_values[index[id(v)]] for v in averages])


def largest_deviation(ours: Any, theirs: Any) -> float:
    pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0)) for a, b in pairs)


def plot(history: dict[str, list[Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="tight")
    ax_loss, ax_rate = fig.subplots(1, 2)
    steps = np.arange(1, len(history["train_loss"]) + 1)
    window = min(20, len(steps))  # a run shorter than 20 steps averages all of them
    smooth = np.convolve(history["train_loss"], np.ones(window) / window, mode="valid")
    ax_loss.plot(steps, history["train_loss"], color="0.8", lw=0.5, label="train (batch)")
    ax_loss.plot(steps[window - 1 :], smooth, color="C0", label=f"train ({window}-step mean)")
    evals = history["eval_step"]
    ax_loss.plot(evals, history["eval_loss"], "o-", color="C1", label="eval")
    ax_loss.plot(evals, history["eval_loss_ema"], "s--", color="C2", label="eval, EMA weights")
    if history.get("keras_eval_loss"):
        ax_loss.plot(evals, history["keras_eval_loss"], "x:", color="k", label="eval, Keras Adam")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="two spirals")
    ax_loss.legend()
    ax_rate.plot(steps, history["learning_rate"], color="C3")
    ax_rate.set(xlabel="step", ylabel="learning rate", title="adamx.current_learning_rate")
    fig.savefig(path, dpi=100)


def final_metrics(
    steps: int, evaluate: Callable[..., Any], params: Any, ema: Any, train: Any, eval_: Any
) -> dict[str, Any]:
    """Loss and accuracy of the trained and the EMA parameters, printed and returned."""
    metrics: dict[str, Any] = {"steps": steps}
    for label, key_template, weights, data in (
        ("train:", "train_{}", params, train),
        ("eval: ", "eval_{}", params, eval_),
        ("eval with EMA weights (adamx.ema_params):", "eval_{}_ema", ema, eval_),
    ):
        loss, accuracy = (float(value) for value in evaluate(weights, *data))
        metrics |= {key_template.format("loss"): loss, key_template.format("accuracy"): accuracy}
        print(f"{label} loss {loss:.4f}, accuracy {accuracy:.3f}")
    return metrics


def compare_with_keras(twin: KerasTwin, params: Any, ema: Any) -> dict[str, float]:
    """The largest deviation of our parameters and EMA from Keras's, against its movement."""
    theirs = twin.as_tree(twin.values)
    ours = nnx.to_pure_dict(params), nnx.to_pure_dict(ema)
    deviation = largest_deviation(ours, (theirs, twin.ema()))
    movement = largest_deviation(theirs, twin.initial)
    print(
        f"Keras Adam on the same weights and batches: largest deviation {deviation:.3g} "
        f"(parameters and EMA) for a movement of {movement:.3g}; tolerance "
        f"{KERAS_TOLERANCE} x movement = {KERAS_TOLERANCE * movement:.3g}"
    )
    return {
        "keras_max_deviation": deviation,
        "keras_movement": movement,
        "keras_tolerance": KERAS_TOLERANCE * movement,
    }


def jitted_steps(
    graphdef: nnx.GraphDef[MLP], tx: optax.GradientTransformation
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The training step and the evaluation (loss, accuracy) of the network `graphdef`, jitted."""

    def loss_and_accuracy(params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = nnx.merge(graphdef, params)(x)
        return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, axis=-1) == y)

    @jax.jit
    def train_step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        (loss, _), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step, jax.jit(loss_and_accuracy)


def run(steps: int, seed: int, out: Path, compare_keras: bool) -> dict[str, Any]:
    start = time.perf_counter()
    x_train, y_train = two_spirals(4096, seed)
    eval_data = two_spirals(1024, seed + 1)
    graphdef, params = nnx.split(MLP(nnx.Rngs(seed)), nnx.Param)
    settings = optimizer_settings(steps)
    tx = adamx.adam(**settings, exclude_from_weight_decay=["bias"])
    opt_state = tx.init(params)
    twin = KerasTwin(params, settings) if compare_keras else None
    print(f"adamx {adamx.__version__} demo: two spirals, Flax NNX MLP 2-64-64-2, {steps} steps")
    print(
        "adamx.adam: warm-up + cosine schedule, global_clipnorm=1.0, use_ema=True, "
        f"weight_decay=1e-4 on {', '.join(adamx.decayed_paths(params, ['bias']))}"
    )
    train_step, evaluate = jitted_steps(graphdef, tx)

    history: dict[str, list[Any]] = defaultdict(list)
    eval_every = max(steps // 20, 1)
    rng = np.random.default_rng(seed)
    for step in range(1, steps + 1):
        batch = rng.integers(0, len(x_train), size=BATCH)
        x, y = x_train[batch], y_train[batch]
        history["learning_rate"].append(float(adamx.current_learning_rate(opt_state)))
        params, opt_state, loss = train_step(params, opt_state, x, y)
        if twin is not None:
            twin.train_step(x, y)
        history["train_loss"].append(float(loss))
        if step % eval_every == 0 or step == steps:  # 20 evaluations and progress lines
            print(f"step {step}/{steps} loss {float(loss):.4f}", file=sys.stderr)
            history["eval_step"].append(step)
            to_evaluate = {"eval_loss": params, "eval_loss_ema": adamx.ema_params(opt_state)}
            if twin is not None:
                to_evaluate["keras_eval_loss"] = twin.as_state(params)
            for key, weights in to_evaluate.items():
                history[key].append(float(evaluate(weights, *eval_data)[0]))

    ema = adamx.ema_params(opt_state)
    metrics = final_metrics(steps, evaluate, params, ema, (x_train, y_train), eval_data)
    if twin is not None:
        metrics |= compare_with_keras(twin, params, ema)
    out.mkdir(parents=True, exist_ok=True)
    plot(history, out / "loss_curve.png")
    metrics["seconds"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'loss_curve.png'} and {out / 'metrics.json'} ({metrics['seconds']:.1f}s)")
    return metrics
