"""Bad input, argument by argument, for every public factory: a clear error at construction.

Each case must raise ValueError or TypeError whose message names the argument (in backticks)
and says what is accepted. `test_adam.py::INVALID` adds `adam`-specific cases on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

NAN, INF = math.nan, math.inf

# For a real-valued argument in an interval: wrong types, non-finite, out of range.
NOT_REAL = ["0.1", None, True, np.array([0.1, 0.2]), [0.1], {"a": 1}]
NON_FINITE = [NAN, INF, -INF]


def reals(low_excluded: list[Any], above: list[Any] = ()) -> list[tuple[Any, type]]:
    return (
        [(v, TypeError) for v in NOT_REAL]
        + [(v, ValueError) for v in NON_FINITE]
        + [(v, ValueError) for v in [*low_excluded, *above]]
    )


def ints(low: int) -> list[tuple[Any, type]]:
    return [
        (low - 1, ValueError),
        (-5, ValueError),
        (2.0, TypeError),
        (2.5, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
        (np.array(3), TypeError),
        (jnp.asarray(3), TypeError),
    ]


def bools() -> list[tuple[Any, type]]:
    return [(v, TypeError) for v in (1, 0, "yes", None, np.array([True]))]


SEEDS = [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), (True, TypeError)]
SEEDS += [(jnp.asarray(3), TypeError)]
INNER = adamx.adam()
NOT_A_TRANSFORMATION = [(v, TypeError) for v in (None, "adam", lambda g: g, 0.1, optax.adam)]

# factory name -> (factory, default keyword arguments, {argument: [(bad value, error)]})
TABLE: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, list[tuple[Any, type]]]]] = {
    "adam": (
        adamx.adam,
        {},
        {
            "learning_rate": reals([-0.1, -1]),
            "beta_1": [*reals([-0.1], [1.0, 1.5]), (lambda: 0.9, TypeError)],
            "beta_2": [*reals([-0.1], [1.0, 2.0]), (lambda: 0.9, TypeError)],
            "epsilon": reals([0.0, -1e-7]),
            "amsgrad": bools(),
            "weight_decay": [(v, e) for v, e in reals([-0.01]) if v is not None],
            "clipnorm": [(v, e) for v, e in reals([0.0, -1.0]) if v is not None],
            "clipvalue": [(v, e) for v, e in reals([0.0, -1.0]) if v is not None],
            "global_clipnorm": [(v, e) for v, e in reals([0.0, -1.0]) if v is not None],
            "use_ema": bools(),
            "ema_momentum": reals([-0.1], [1.1]),
            "ema_overwrite_frequency": [(v, e) for v, e in ints(1) if v is not None],
            "loss_scale_factor": [(v, e) for v, e in reals([0.0, -2.0]) if v is not None],
            "gradient_accumulation_steps": [(v, e) for v, e in ints(2) if v is not None],
            "name": [("a/b", ValueError), ("", ValueError), (3, ValueError), (None, ValueError)],
            "nesterov": bools(),
            "mu_dtype": [(jnp.int32, TypeError), ("floaty", TypeError), (bool, TypeError)],
            "nu_dtype": [(jnp.int32, TypeError), (jnp.complex64, TypeError), ("8-bit", ValueError)],
            "ema_dtype": [(jnp.int8, TypeError)],
            "rounding_seed": SEEDS,
            "skip_nonfinite": bools(),
        },
    ),
    "loss_scale_optimizer": (
        adamx.loss_scale_optimizer,
        {"inner": INNER},
        {
            "inner": NOT_A_TRANSFORMATION,
            "initial_scale": reals([0.0, -1.0]),
            "dynamic_growth_steps": ints(1),
        },
    ),
    "scale_by_keras_adam": (
        adamx.scale_by_keras_adam,
        {},
        {
            "learning_rate": reals([-0.1]),
            "beta_1": reals([-0.5], [1.0]),
            "beta_2": reals([-0.5], [1.0]),
            "epsilon": reals([0.0]),
            "amsgrad": bools(),
            "nesterov": bools(),
            "mu_dtype": [(jnp.int8, TypeError), ("8BIT", ValueError), ("int8", TypeError)],
            "nu_dtype": [(jnp.int8, TypeError)],
            "rounding_seed": SEEDS,
        },
    ),
    "clip_by_norm": (adamx.clip_by_norm, {"clipnorm": 1.0}, {"clipnorm": reals([0.0, -1.0])}),
    "clip_by_value": (adamx.clip_by_value, {"clipvalue": 1.0}, {"clipvalue": reals([0.0, -1.0])}),
    "clip_by_global_norm": (
        adamx.clip_by_global_norm,
        {"global_clipnorm": 1.0},
        {"global_clipnorm": reals([0.0, -1.0])},
    ),
    "decoupled_weight_decay": (
        adamx.decoupled_weight_decay,
        {"weight_decay": 0.1},
        {
            "weight_decay": reals([-0.1]),
            "learning_rate": reals([-0.1]),
            "exclude_from_weight_decay": [(["("], ValueError), ("[", ValueError)],
        },
    ),
    "ema_of_params": (
        adamx.ema_of_params,
        {},
        {
            "ema_momentum": reals([-0.1], [1.5]),
            "ema_overwrite_frequency": [(v, e) for v, e in ints(1) if v is not None],
            "steps_per_update": ints(1),
            "ema_dtype": [(jnp.int8, TypeError), ("floaty", TypeError)],
            "rounding_seed": SEEDS,
        },
    ),
    "stochastic_round_params": (
        adamx.stochastic_round_params,
        {"rounding_seed": 0},
        {"rounding_seed": SEEDS},
    ),
    "static_loss_scale": (
        adamx.static_loss_scale,
        {"inner": INNER, "loss_scale_factor": 2.0},
        {"inner": NOT_A_TRANSFORMATION, "loss_scale_factor": reals([0.0, -2.0])},
    ),
    "accumulate_gradients": (
        adamx.accumulate_gradients,
        {"inner": INNER, "gradient_accumulation_steps": 2},
        {
            "inner": NOT_A_TRANSFORMATION,
            "gradient_accumulation_steps": ints(2),
            "accumulation_dtype": [(jnp.int32, TypeError), (jnp.complex64, TypeError)],
        },
    ),
    "skip_missing_gradients": (
        adamx.skip_missing_gradients,
        {"inner": INNER},
        {"inner": NOT_A_TRANSFORMATION},
    ),
    "skip_nonfinite_updates": (
        adamx.skip_nonfinite_updates,
        {"inner": INNER},
        {"inner": NOT_A_TRANSFORMATION},
    ),
}

CASES = [
    pytest.param(factory, argument, value, error, id=f"{factory}-{argument}={value!r:.20}")
    for factory, (_, _, arguments) in TABLE.items()
    for argument, bad in arguments.items()
    for value, error in bad
]


@pytest.mark.parametrize(("factory", "argument", "value", "error"), CASES)
def test_bad_argument_is_named_with_its_accepted_range(
    factory: str, argument: str, value: Any, error: type[Exception]
) -> None:
    make, defaults, _ = TABLE[factory]
    with pytest.raises(error) as raised:
        make(**{**defaults, argument: value})
    message = str(raised.value)
    assert f"`{argument}`" in message, message
    assert any(word in message for word in ("must be", "invalid regular expression")), message


def test_every_argument_of_every_factory_is_covered() -> None:
    import inspect

    for factory, (make, _, arguments) in TABLE.items():
        parameters = set(inspect.signature(make).parameters)
        # Without weight decay or accumulation (the defaults), any value of these is an error
        # of another kind ("has no effect"; `test_precision.py`, `test_adam.py`); their forms
        # are checked in the rows of the factories that own them. `min_8bit_size` likewise
        # without 8-bit moments; its forms are checked in `test_blockwise.py`.
        exempt = {"exclude_from_weight_decay", "accumulation_dtype"}
        parameters -= exempt if factory == "adam" else set()
        parameters -= {"min_8bit_size"}
        assert parameters <= set(arguments), (factory, parameters - set(arguments))


def test_case_count() -> None:
    print(f"{len(CASES)} invalid-input cases over {len(TABLE)} factories")
    assert len(CASES) > 250


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clipnorm": 1.0, "clipvalue": 1.0}, "Only one of `clipnorm`, `clipvalue`"),
        ({"clipvalue": 1.0, "global_clipnorm": 1.0}, "Only one of"),
        ({"exclude_from_weight_decay": ["bias"]}, "`exclude_from_weight_decay` has no effect"),
        ({"ema_overwrite_frequency": 3}, "`ema_overwrite_frequency` has no effect"),
    ],
)
def test_conflicting_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adamx.adam(**kwargs)


def test_state_is_not_corrupted_by_a_rejected_update() -> None:
    """A call that fails (mismatched trees) raises before touching anything; the old state
    still works and gives the same result as if the failed call never happened."""
    tx = adamx.adam(use_ema=True, gradient_accumulation_steps=2)
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="structure of `updates`"):
        tx.update({"a": jnp.ones(2)}, state, params)
    with pytest.raises(TypeError, match="floating-point parameters"):
        tx.init({"a": jnp.ones(2, jnp.int32)})
    grads = {"a": jnp.ones(2), "b": jnp.ones(3)}
    after, _ = tx.update(grads, state, params)
    fresh, _ = tx.update(grads, tx.init(params), params)
    for x, y in zip(np.asarray(after["a"]), np.asarray(fresh["a"]), strict=True):
        assert x == y


@pytest.mark.parametrize("exclusion", [123, 1.5, [True, "bias"], {"dense": {"bias": 1}}])
def test_an_exclusion_of_no_accepted_form_fails_at_construction(exclusion: Any) -> None:
    with pytest.raises(TypeError, match="`exclude_from_weight_decay` must be None, a regular"):
        adamx.adam(weight_decay=0.1, exclude_from_weight_decay=exclusion)


def test_bfloat16_hyperparameters_are_numbers() -> None:
    """NumPy's `issubdtype` does not know bfloat16 is floating; adamx must."""
    tx = adamx.adam(
        learning_rate=jnp.asarray(0.5, jnp.bfloat16), beta_1=jnp.asarray(0.5, jnp.bfloat16)
    )
    params = jnp.array([1.0, 2.0])
    updates, _ = tx.update(jnp.array([1.0, -1.0]), tx.init(params), params)
    # First step: m = g/2, v = g**2/1000, alpha = lr*sqrt(1 - 0.999)/(1 - 0.5) = sqrt(0.001),
    # so the step is -(0.5*g*alpha)/(|g|*sqrt(0.001) + 1e-7) ~ -0.5*sign(g).
    np.testing.assert_allclose(updates, [-0.5, 0.5], rtol=1e-5)


def test_a_beta_rounded_to_one_by_inject_hyperparams_is_explained() -> None:
    tx = optax.inject_hyperparams(adamx.adam)(learning_rate=0.01)
    with pytest.raises(ValueError, match=r"hyperparam_dtype=jnp\.float32"):
        tx.init({"w": jnp.ones(2, jnp.bfloat16)})


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "grads",
    [{"a": jnp.ones(1), "b": jnp.ones(2)}, {"a": jnp.ones((3, 1)), "b": None}],
    ids=["broadcastable", "with a None leaf"],
)
def test_a_gradient_shaped_unlike_its_parameter_is_named(grads: Any, jit: bool) -> None:
    tx = adamx.adam(use_ema=True)
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(
        ValueError, match=r"gradient at 'a' has shape \((1|3, 1),?\), its parameter \(3,\)"
    ):
        update(grads, tx.init(params), params)


def test_integer_parameters_in_update_are_refused_with_their_path() -> None:
    """`optax.apply_updates` would truncate them: [0, 1, 2] + 0.999 steps become [0, 0, 1]."""
    tx = adamx.adam(0.1)
    state = tx.init({"w": jnp.zeros(3)})
    with pytest.raises(TypeError, match="the leaf at 'w' has dtype int32"):
        tx.update({"w": jnp.ones(3)}, state, {"w": jnp.arange(3)})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.1},
        {"use_ema": True, "ema_overwrite_frequency": 1},
        {"gradient_accumulation_steps": 2},
        {"global_clipnorm": 1.0},
        {"clipnorm": 1.0},
        {"loss_scale_factor": 4.0},
    ],
    ids=str,
)
def test_python_scalar_leaves_are_arrays(kwargs: dict[str, Any]) -> None:
    """As with `optax.adam`: a `float` parameter and gradient, here beside an array leaf, give
    what the same values as float32 arrays give."""
    tx = adamx.adam(0.5, **kwargs)
    params, grads = {"s": 2.0, "w": jnp.ones(2)}, {"s": 1.0, "w": jnp.ones(2)}
    as_arrays = {"s": jnp.float32(2.0), "w": jnp.ones(2)}, {"s": jnp.float32(1.0), "w": jnp.ones(2)}
    updates, _ = tx.update(grads, tx.init(params), params)
    expected, _ = tx.update(as_arrays[1], tx.init(as_arrays[0]), as_arrays[0])
    np.testing.assert_array_equal(updates["s"], expected["s"])
