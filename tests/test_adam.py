"""`adamx.adam` against Keras 3's Adam (the oracle) and against the float64 reference."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
import reference
from harness import (
    KERAS_MOVEMENT_RTOL,
    assert_bit_equal,
    assert_close_to_reference,
    check_against_keras,
    max_abs_diff,
    random_grads,
    random_params,
    run_adamx,
    run_keras,
)

import adamx

schedules = keras.optimizers.schedules


@dataclasses.dataclass
class Case:
    adamx: dict[str, Any]
    keras: dict[str, Any] | None = None  # None: the same arguments as adamx
    exclude: list[str] | None = None  # Keras `exclude_from_weight_decay(var_names=...)`
    # Overrides of adamx's arguments for the float64 reference; None: no closed form there.
    reference: dict[str, Any] | None = dataclasses.field(default_factory=dict)
    grad_scale: float = 1.0


def _case(adamx_kwargs: dict[str, Any], **rest: Any) -> Case:
    return Case(adamx_kwargs, **rest)


# One entry per core argument at a non-default value (several forms for learning_rate).
CORE = {
    "defaults": _case({}),
    "small_gradients": _case({}, grad_scale=1e-4),  # where epsilon-hat matters most
    "learning_rate": _case({"learning_rate": 0.01}),
    "learning_rate_int": _case(
        {"learning_rate": 1}, keras={"learning_rate": 1.0}, reference={"learning_rate": 1.0}
    ),
    "learning_rate_keras_schedule": _case(
        {"learning_rate": schedules.ExponentialDecay(0.01, 10, 0.5)},
        reference={"learning_rate": lambda step: 0.01 * 0.5 ** (step / 10)},
    ),
    "learning_rate_optax_schedule": _case(
        {"learning_rate": optax.exponential_decay(0.01, 10, 0.5)},
        keras={"learning_rate": schedules.ExponentialDecay(0.01, 10, 0.5)},
        reference={"learning_rate": lambda step: 0.01 * 0.5 ** (step / 10)},
    ),
    "learning_rate_cosine_warmup": _case(
        {"learning_rate": schedules.CosineDecay(0.001, 80, warmup_target=0.01, warmup_steps=10)},
        reference=None,  # the formula is Keras's own; checked against Keras only
    ),
    "learning_rate_callable": _case(
        {"learning_rate": lambda: 0.005}, reference={"learning_rate": 0.005}
    ),
    "beta_1": _case({"beta_1": 0.5}),
    "beta_1_zero": _case({"beta_1": 0.0}),
    "beta_2": _case({"beta_2": 0.9}),
    "epsilon": _case({"epsilon": 1e-3}),
    "epsilon_small_gradients": _case({"epsilon": 1e-3}, grad_scale=1e-4),
    "amsgrad": _case({"amsgrad": True}),
    "weight_decay": _case({"learning_rate": 0.01, "weight_decay": 0.05}),
    "weight_decay_exclude": _case(
        {"learning_rate": 0.01, "weight_decay": 0.05, "exclude_from_weight_decay": ["bias"]},
        keras={"learning_rate": 0.01, "weight_decay": 0.05},
        exclude=["bias"],
        reference={"excluded": [True, False, False, False]},
    ),
    "clipnorm": _case({"clipnorm": 0.5}),
    "clipvalue": _case({"clipvalue": 0.3}),
    "global_clipnorm": _case({"global_clipnorm": 0.5}),
}

COMBINATIONS = {
    "amsgrad+weight_decay+clipnorm": _case(
        {"learning_rate": 0.01, "amsgrad": True, "weight_decay": 0.01, "clipnorm": 0.3}
    ),
    "schedule+global_clipnorm+epsilon": _case(
        {
            "learning_rate": schedules.InverseTimeDecay(0.02, 10, 0.5),
            "global_clipnorm": 1.0,
            "epsilon": 1e-4,
        },
        reference={"learning_rate": lambda step: 0.02 / (1 + 0.5 * step / 10)},
    ),
    "betas+clipvalue+weight_decay_exclude": _case(
        {
            "beta_1": 0.8,
            "beta_2": 0.99,
            "clipvalue": 0.5,
            "weight_decay": 0.1,
            "exclude_from_weight_decay": ["bias", "^scale$"],
        },
        keras={"beta_1": 0.8, "beta_2": 0.99, "clipvalue": 0.5, "weight_decay": 0.1},
        exclude=["bias", "^scale$"],
        reference={"excluded": [True, False, False, True]},
    ),
    "everything_core": _case(
        {
            "learning_rate": schedules.ExponentialDecay(0.01, 20, 0.7, staircase=True),
            "beta_1": 0.85,
            "beta_2": 0.95,
            "epsilon": 1e-5,
            "amsgrad": True,
            "weight_decay": 0.02,
            "global_clipnorm": 2.0,
        },
        reference={"learning_rate": lambda step: 0.01 * 0.7 ** (step // 20)},
    ),
    "small_gradients+clipnorm+amsgrad": _case(
        {"clipnorm": 1e-4, "amsgrad": True, "epsilon": 1e-6}, grad_scale=1e-3
    ),
    "callable_lr+weight_decay+beta_1_zero": _case(
        {"learning_rate": lambda: 0.02, "weight_decay": 0.004, "beta_1": 0.0},
        reference={"learning_rate": 0.02},
    ),
}

ALL_CASES = {**CORE, **COMBINATIONS}


def _keras_adam(case: Case) -> Any:
    return keras.optimizers.Adam(**(case.adamx if case.keras is None else case.keras))


def _inputs(case: Case, steps: int, seed: int = 0) -> tuple[Any, list[Any]]:
    params = random_params(seed)
    return params, random_grads(seed, steps, params, scale=case.grad_scale)


@pytest.mark.parametrize("steps", [1, 100])
@pytest.mark.parametrize("name", list(ALL_CASES))
def test_matches_keras_jitted(name: str, steps: int) -> None:
    case = ALL_CASES[name]
    params, grads = _inputs(case, steps)
    check_against_keras(case.adamx, params, grads, keras_kwargs=case.keras, exclude=case.exclude)


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_bit_identical_to_keras_op_by_op(name: str) -> None:
    """In matched execution modes (both op by op) adamx reproduces Keras's float32 bits."""
    case = ALL_CASES[name]
    params, grads = _inputs(case, 8, seed=1)
    check_against_keras(
        case.adamx, params, grads, jit=False, keras_kwargs=case.keras, exclude=case.exclude
    )


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_matches_float64_reference(name: str) -> None:
    case = ALL_CASES[name]
    if case.reference is None:
        pytest.skip("no closed form for this schedule in the reference; Keras covers it")
    params, grads = _inputs(case, 100, seed=2)
    kwargs = {k: v for k, v in case.adamx.items() if k != "exclude_from_weight_decay"}
    kwargs |= case.reference
    if isinstance(kwargs.get("learning_rate"), schedules.LearningRateSchedule):
        pytest.skip("Keras schedule objects are checked against Keras")
    expected = reference.run(
        reference.Config(**kwargs),
        jax.tree.leaves(params),
        [jax.tree.leaves(g) for g in grads],
    )
    ours, _ = run_adamx(adamx.adam(**case.adamx), params, grads)
    assert_close_to_reference(ours, expected.params)


def test_tolerance_covers_keras_self_drift() -> None:
    """The Keras tolerance must exceed how far Keras drifts from itself (eager vs jit)."""
    case = _case({"learning_rate": 0.01, "weight_decay": 0.05, "clipnorm": 0.5})
    params, grads = _inputs(case, 100, seed=3)
    eager = run_keras(_keras_adam(case), params, grads, jit=False).params
    jitted = run_keras(_keras_adam(case), params, grads, jit=True).params
    drift = max_abs_diff(eager, jitted)
    movement = max_abs_diff(jitted, params)
    assert 0 < drift <= KERAS_MOVEMENT_RTOL * movement


def test_default_arguments_are_keras_defaults() -> None:
    import inspect

    ours = inspect.signature(adamx.adam).parameters
    theirs = inspect.signature(keras.optimizers.Adam).parameters
    shared = [n for n in theirs if n in ours]
    assert shared == [n for n in ours if n in theirs][: len(shared)]
    for name in shared:
        expected = "adam" if name == "name" else theirs[name].default
        assert ours[name].default == expected, name
    assert [n for n in theirs if n not in ours] == ["kwargs"]


# ---------------------------------------------------------------------------------- validation

INVALID: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"learning_rate": -0.1}, ValueError, r"`learning_rate` must be a finite real number in \[0"),
    ({"learning_rate": math.nan}, ValueError, "learning_rate"),
    ({"learning_rate": math.inf}, ValueError, "learning_rate"),
    ({"learning_rate": "0.1"}, TypeError, "learning_rate"),
    ({"learning_rate": None}, TypeError, "learning_rate"),
    ({"learning_rate": True}, TypeError, "learning_rate"),
    ({"learning_rate": np.array([0.1, 0.2])}, TypeError, "learning_rate"),
    ({"beta_1": 1.0}, ValueError, r"`beta_1` must be a finite real number in \[0, 1\)"),
    ({"beta_1": -0.1}, ValueError, "beta_1"),
    ({"beta_1": lambda: 0.9}, TypeError, "beta_1"),
    ({"beta_2": 1.5}, ValueError, "beta_2"),
    ({"beta_2": "0.9"}, TypeError, "beta_2"),
    ({"epsilon": 0.0}, ValueError, r"`epsilon` must be a finite real number in \(0"),
    ({"epsilon": -1e-7}, ValueError, "epsilon"),
    ({"amsgrad": 1}, TypeError, "amsgrad"),
    ({"weight_decay": -0.01}, ValueError, "weight_decay"),
    ({"weight_decay": "0.01"}, TypeError, "weight_decay"),
    ({"clipnorm": 0.0}, ValueError, r"`clipnorm` must be a finite real number in \(0"),
    ({"clipnorm": -1.0}, ValueError, "clipnorm"),
    ({"clipvalue": math.inf}, ValueError, "clipvalue"),
    ({"global_clipnorm": -2.0}, ValueError, "global_clipnorm"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "Only one of `clipnorm`, `clipvalue`"),
    ({"clipnorm": 1.0, "global_clipnorm": 0.0}, ValueError, "Only one of"),
    ({"use_ema": "yes"}, TypeError, "use_ema"),
    ({"use_ema": True, "ema_momentum": 1.5}, ValueError, r"`ema_momentum` must be .* \[0, 1\]"),
    ({"use_ema": True, "ema_momentum": -0.1}, ValueError, "ema_momentum"),
    ({"use_ema": True, "ema_overwrite_frequency": 0}, ValueError, "ema_overwrite_frequency"),
    ({"use_ema": True, "ema_overwrite_frequency": 2.0}, TypeError, "ema_overwrite_frequency"),
    ({"use_ema": True, "ema_overwrite_frequency": True}, TypeError, "ema_overwrite_frequency"),
    ({"loss_scale_factor": 0.0}, ValueError, "loss_scale_factor"),
    ({"loss_scale_factor": -2.0}, ValueError, "loss_scale_factor"),
    (
        {"gradient_accumulation_steps": 1},
        ValueError,
        r"`gradient_accumulation_steps` must be an integer >= 2",
    ),
    ({"gradient_accumulation_steps": -2}, ValueError, "gradient_accumulation_steps"),
    ({"gradient_accumulation_steps": True}, TypeError, "gradient_accumulation_steps"),
    ({"gradient_accumulation_steps": 2.5}, TypeError, "gradient_accumulation_steps"),
    ({"name": "a/b"}, ValueError, "`name`"),
    ({"name": 3}, ValueError, "`name`"),
    ({"nesterov": "no"}, TypeError, "nesterov"),
    (
        {"weight_decay": 0.1, "exclude_from_weight_decay": ["["]},
        ValueError,
        "invalid regular expression",
    ),
    ({"exclude_from_weight_decay": ["bias"]}, ValueError, "no effect without `weight_decay`"),
    ({"mu_dtype": jnp.int32}, TypeError, "mu_dtype"),
]


def _id(kwargs: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return (
            value.__class__.__name__ if callable(value) or hasattr(value, "shape") else repr(value)
        )

    return ",".join(f"{k}={show(v)}" for k, v in kwargs.items())


@pytest.mark.parametrize(("kwargs", "error", "message"), INVALID, ids=[_id(c[0]) for c in INVALID])
def test_invalid_arguments_raise_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        adamx.adam(**kwargs)


def test_unknown_keyword_raises() -> None:
    with pytest.raises(TypeError, match="decay"):
        adamx.adam(decay=0.1)  # type: ignore[call-arg]


@pytest.mark.parametrize("rate", [1, np.float32(1.0), jnp.asarray(1.0), np.float64(1.0)])
def test_learning_rate_forms_keras_rejects_are_accepted(rate: Any) -> None:
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    expected, _ = adamx.adam(learning_rate=1.0).update(grads, adamx.adam().init(params), params)
    tx = adamx.adam(learning_rate=rate)
    got, _ = tx.update(grads, tx.init(params), params)
    assert_bit_equal(got, expected)


@pytest.mark.parametrize(
    ("grads", "message"),
    [
        ({"a": jnp.ones(2)}, "structure of `updates` does not match the structure of `params`"),
        ({"a": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(1)}, "structure of `updates`"),
    ],
)
def test_mismatched_trees_raise_clearly(grads: Any, message: str) -> None:
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    tx = adamx.adam(gradient_accumulation_steps=2, use_ema=True)
    state = tx.init(params)
    with pytest.raises(ValueError, match=message):
        jax.jit(tx.update)(grads, state, params)


def test_mismatched_state_raises_clearly() -> None:
    tx = adamx.adam()
    state = tx.init({"a": jnp.zeros(2)})
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match="optimizer state's moments"):
        tx.update(params, state, params)


def test_integer_parameters_raise_clearly() -> None:
    with pytest.raises(TypeError, match="leaf at 'w' has dtype int32"):
        adamx.adam().init({"w": jnp.zeros(3, jnp.int32)})


def test_integer_gradients_are_cast_like_keras() -> None:
    params = {"w": jnp.ones(3)}
    tx = adamx.adam(learning_rate=0.1)
    from_int, _ = tx.update({"w": jnp.array([1, -2, 3])}, tx.init(params), params)
    from_float, _ = tx.update({"w": jnp.array([1.0, -2.0, 3.0])}, tx.init(params), params)
    assert from_int["w"].dtype == jnp.float32
    assert_bit_equal(from_int, from_float)
