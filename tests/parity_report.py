"""Largest deviation from Keras per argument and per feature, and state bytes per parameter.

Run from the repository root: `KERAS_BACKEND=jax python tests/parity_report.py`. Both sides
run jitted (Keras's `stateless_apply`, as `fit` does) on the test suite's configurations.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax
import jax.numpy as jnp
import keras
import numpy as np
from harness import (
    KERAS_MOVEMENT_RTOL,
    max_abs_diff,
    random_grads,
    random_params,
    run_adamx,
    run_keras,
)
from test_accumulation import CASES as ACCUMULATION
from test_adam import ALL_CASES, _keras_adam
from test_ema import CASES as EMA

import adamx


def _row(label: str, ours: object, theirs: object, initial: object) -> None:
    deviation, movement = max_abs_diff(ours, theirs), max_abs_diff(theirs, initial)
    ratio = deviation / movement
    print(f"| {label} | {deviation:.2e} | {movement:.2e} | {ratio:.1e} |")


def core_arguments(steps: int = 100) -> None:
    print(
        f"\n### Core arguments, {steps} jitted steps (tolerance {KERAS_MOVEMENT_RTOL} x movement)"
    )
    print("| case | max abs deviation | movement | deviation / movement |\n|---|---|---|---|")
    for name, case in ALL_CASES.items():
        params = random_params(0)
        grads = random_grads(0, steps, params, scale=case.grad_scale)
        ours, _ = run_adamx(adamx.adam(**case.adamx), params, grads)
        theirs = run_keras(_keras_adam(case), params, grads, exclude_names=case.exclude)
        _row(name, ours, theirs.params, params)


def features(steps: int = 200) -> None:
    print(f"\n### EMA, loss scaling, accumulation, {steps} jitted calls")
    print("| case | max abs deviation | movement | deviation / movement |\n|---|---|---|---|")
    cases = {f"ema/{k}": v for k, v in EMA.items()}
    cases |= {f"accumulation/{k}": v for k, v in ACCUMULATION.items()}
    cases |= {"loss_scale_factor=128": {"learning_rate": 0.01, "loss_scale_factor": 128.0}}
    for name, kwargs in cases.items():
        params = random_params(1)
        grads = random_grads(1, steps, params, scale=kwargs.get("loss_scale_factor", 1.0))
        ours, state = run_adamx(adamx.adam(**kwargs), params, grads)
        theirs = run_keras(keras.optimizers.Adam(**kwargs), params, grads)
        _row(name, ours, theirs.params, params)
        if kwargs.get("use_ema"):
            average = theirs.slot(theirs.optimizer._model_variables_moving_average)
            _row(f"{name} (EMA average)", adamx.ema_params(state), average, params)
    params = random_params(5)
    grads = random_grads(5, steps, params, scale=8.0)
    for i in (1, 2, 3, 9, 13, 50, 120):
        grads[i]["dense"]["kernel"][0, 1] = np.inf if i % 2 else np.nan
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01), 8.0, 3)
    theirs = run_keras(lso, params, grads)
    ours, _ = run_adamx(adamx.loss_scale_optimizer(adamx.adam(0.01), 8.0, 3), params, grads)
    _row("loss_scale_optimizer (7 non-finite calls)", ours, theirs.params, params)


def state_bytes() -> None:
    print("\n### Optimizer state bytes per float32 parameter (1M parameters)")
    params = {"w": jnp.zeros((1000, 1000), jnp.float32)}
    plain = _bytes(adamx.adam(), params)
    print("| configuration | bytes / parameter | extra over adam() |\n|---|---|---|")
    print(f"| adam() | {plain:.3f} | |")
    for label, tx in {
        "amsgrad=True": adamx.adam(amsgrad=True),
        "use_ema=True": adamx.adam(use_ema=True, ema_overwrite_frequency=5),
        "gradient_accumulation_steps=4": adamx.adam(gradient_accumulation_steps=4),
        "loss_scale_factor=128": adamx.adam(loss_scale_factor=128.0),
        "loss_scale_optimizer(adam())": adamx.loss_scale_optimizer(adamx.adam()),
        "weight_decay=0.01": adamx.adam(weight_decay=0.01),
        "clipnorm / global_clipnorm": adamx.adam(global_clipnorm=1.0),
        "mu_dtype=bfloat16": adamx.adam(mu_dtype=jnp.bfloat16),
    }.items():
        size = _bytes(tx, params)
        print(f"| {label} | {size:.3f} | {size - plain:+.3f} |")


def _bytes(tx: object, params: object) -> float:
    state = jax.eval_shape(tx.init, params)  # type: ignore[attr-defined]
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return total / 1_000_000


if __name__ == "__main__":
    core_arguments()
    features()
    state_bytes()
