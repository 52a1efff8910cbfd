"""A float64 NumPy model of Keras 3's Adam, written from the spec (docs of section 3 to 5).

Independent of adamx and of Keras: plain loops over a list of leaves, one call at a time,
in the spec's order of operations. Used as an oracle with a float32-vs-float64 tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass
class Config:
    learning_rate: float | Callable[[int], float] = 0.001  # a number or step -> rate
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    amsgrad: bool = False
    nesterov: bool = False
    weight_decay: float | None = None
    excluded: Sequence[bool] = ()  # per leaf: True = no weight decay
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: int | None = None
    loss_scale_factor: float | None = None
    gradient_accumulation_steps: int | None = None
    dynamic_scale: tuple[float, int] | None = None  # (initial_scale, dynamic_growth_steps)
    # Storage dtypes of state leaves ("m", "v" (and v-hat), "average", "acc"): each is rounded
    # to its dtype when stored; the arithmetic stays float64.
    storage: dict[str, type] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Result:
    params: list[np.ndarray]
    m: list[np.ndarray]
    v: list[np.ndarray]
    average: list[np.ndarray] | None
    iteration: int  # Keras's raw counter `it`
    scales: list[float]  # the dynamic scale after each call


def run(
    config: Config, params: Sequence[np.ndarray], grads: Sequence[Sequence[np.ndarray]]
) -> Result:
    c = config
    p = [np.array(x, np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    v_hat = [np.zeros_like(x) for x in p]
    acc = [np.zeros_like(x) for x in p]
    avg = [np.zeros_like(x) for x in p]
    excluded = list(c.excluded) or [False] * len(p)
    n = c.gradient_accumulation_steps
    it = 0
    scale, growth = (c.dynamic_scale or (1.0, 0))[0], 0
    scales = []

    def store(kind: str, x: np.ndarray) -> np.ndarray:
        dtype = c.storage.get(kind)
        return x if dtype is None else np.asarray(x, dtype).astype(np.float64)

    def rate(step: int) -> float:
        return float(c.learning_rate(step)) if callable(c.learning_rate) else c.learning_rate

    for call_grads in grads:
        g = [np.array(x, np.float64) for x in call_grads]
        if c.dynamic_scale is not None:
            if not all(np.all(np.isfinite(x)) for x in g):
                scale, growth = scale / 2, 0
                scales.append(scale)
                continue
            g = [x / scale for x in g]
            if growth == c.dynamic_scale[1] - 1:
                scale, growth = scale * 2, 0
            else:
                growth += 1
            scales.append(scale)
        if c.loss_scale_factor is not None:
            g = [x / c.loss_scale_factor for x in g]
        k = it // n if n else it
        update = True
        if n:
            update = (it + 1) % n == 0
            if update:
                g = [store("acc", x + a) / n for x, a in zip(g, acc, strict=True)]
                acc = [np.zeros_like(a) for a in acc]
            else:
                acc = [store("acc", x + a) for x, a in zip(g, acc, strict=True)]
        if update:
            g = _clip(c, g)
            lr = rate(it)
            if c.weight_decay is not None:
                p = [
                    x if ex else x - x * c.weight_decay * lr
                    for x, ex in zip(p, excluded, strict=True)
                ]
            t = k + 1
            b1, b2 = c.beta_1, c.beta_2
            for i in range(len(p)):
                # The step reads the moments as stored.
                m[i] = store("m", m[i] + (g[i] - m[i]) * (1 - b1))
                v[i] = store("v", v[i] + (g[i] ** 2 - v[i]) * (1 - b2))
                v_hat[i] = np.maximum(v_hat[i], v[i])
                denominator = np.sqrt(v_hat[i] if c.amsgrad else v[i]) + c.epsilon
                if c.nesterov:
                    m_hat = b1 * m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * g[i] / (1 - b1**t)
                    p[i] = p[i] - lr * np.sqrt(1 - b2**t) * m_hat / denominator
                else:
                    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
                    p[i] = p[i] - m[i] * alpha / denominator
        if c.use_ema:
            mu = c.ema_momentum * (k != 0)
            avg = [store("average", mu * a + (1 - mu) * x) for a, x in zip(avg, p, strict=True)]
            f = c.ema_overwrite_frequency
            if f is not None and (k + 1) % f == 0:
                p = [a.copy() for a in avg]
        it += 1
    return Result(p, m, v, avg if c.use_ema else None, it, scales)


def _clip(c: Config, g: list[np.ndarray]) -> list[np.ndarray]:
    if c.clipnorm is not None:
        return [x * c.clipnorm / max(np.sqrt(np.sum(x**2)), c.clipnorm) for x in g]
    if c.clipvalue is not None:
        return [np.clip(x, -c.clipvalue, c.clipvalue) for x in g]
    if c.global_clipnorm is not None:
        norm = np.sqrt(sum(np.sum(x**2) for x in g))
        with np.errstate(divide="ignore"):  # a zero norm: 1/0 = inf, and min picks 1/c
            return [x * c.global_clipnorm * min(1 / norm, 1 / c.global_clipnorm) for x in g]
    return g
