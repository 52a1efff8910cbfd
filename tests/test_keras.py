"""Moving from Keras: `from_keras_config` and `from_keras_optimizer`, round-tripped through Keras.

Each round trip trains Keras's `Adam` for K calls, moves the optimizer into adamx, then runs N
more calls in both: op by op the parameters (and EMA) must be bit-identical, jitted within the
Keras tolerance. K is chosen to land in the middle of accumulation and overwrite cycles.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import keras
import numpy as np
import pytest
from harness import (
    assert_bit_equal,
    assert_close_to_keras,
    max_abs_diff,
    random_grads,
    random_params,
    run_adamx,
    short_names,
)

import adamx
from adamx._trees import path_str

schedules = keras.optimizers.schedules
BEFORE, AFTER = 7, 9  # calls before the move, calls after it

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "learning_rate": {"learning_rate": 0.01},
    "learning_rate/ExponentialDecay": {"learning_rate": schedules.ExponentialDecay(0.02, 3, 0.7)},
    "learning_rate/CosineDecay+warmup": {
        "learning_rate": schedules.CosineDecay(0.001, 12, warmup_target=0.02, warmup_steps=4)
    },
    "beta_1+beta_2": {"learning_rate": 0.01, "beta_1": 0.5, "beta_2": 0.9},
    "epsilon": {"learning_rate": 0.01, "epsilon": 1e-3},
    "amsgrad": {"learning_rate": 0.01, "amsgrad": True},
    "weight_decay": {"learning_rate": 0.01, "weight_decay": 0.1},
    "clipnorm": {"learning_rate": 0.01, "clipnorm": 0.5},
    "clipnorm=0 (Keras: off)": {"learning_rate": 0.01, "clipnorm": 0.0},
    "clipvalue": {"learning_rate": 0.01, "clipvalue": 0.3},
    "global_clipnorm": {"learning_rate": 0.01, "global_clipnorm": 0.5},
    "use_ema": {"learning_rate": 0.01, "use_ema": True},
    "ema_momentum+overwrite": {
        "learning_rate": 0.01,
        "use_ema": True,
        "ema_momentum": 0.9,
        "ema_overwrite_frequency": 3,
    },
    "loss_scale_factor": {"learning_rate": 0.01, "loss_scale_factor": 8.0},
    "gradient_accumulation_steps": {"learning_rate": 0.01, "gradient_accumulation_steps": 3},
    "accumulation+ema+overwrite+schedule+amsgrad+decay": {
        "learning_rate": schedules.PiecewiseConstantDecay([2, 4], [0.02, 0.01, 0.005]),
        "gradient_accumulation_steps": 2,
        "use_ema": True,
        "ema_overwrite_frequency": 2,
        "amsgrad": True,
        "weight_decay": 0.05,
        "global_clipnorm": 1.0,
    },
    "name": {"learning_rate": 0.01, "name": "my_adam"},
}


def keras_setup(params: Any, kwargs: dict[str, Any], scaling: dict[str, Any] | None) -> Any:
    variables = [
        keras.Variable(np.asarray(leaf), name=name)
        for leaf, name in zip(jax.tree.leaves(params), short_names(params), strict=True)
    ]
    optimizer: Any = keras.optimizers.Adam(**kwargs)
    if kwargs.get("weight_decay") is not None:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    if scaling is not None:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, **scaling)
    optimizer.build(variables)
    return optimizer, variables


def keras_calls(optimizer: Any, variables: list[Any], grads: list[Any], jit: bool) -> None:
    """Runs `stateless_apply` (what `fit` uses) and writes the results back, as `fit` does."""
    opt_values = [v.value for v in optimizer.variables]
    values = [v.value for v in variables]
    with contextlib.nullcontext() if jit else jax.disable_jit():
        apply = jax.jit(optimizer.stateless_apply) if jit else optimizer.stateless_apply
        for g in grads:
            values, opt_values = apply(opt_values, jax.tree.leaves(g), values)
    for variable, value in zip(optimizer.variables, opt_values, strict=True):
        variable.assign(value)
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def flat_paths(tree: Any) -> list[tuple[str, Any]]:
    return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def as_tree(params: Any, variables: list[Any]) -> Any:
    leaves = [np.asarray(v.value) for v in variables]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def adamx_calls(tx: Any, params: Any, state: Any, grads: list[Any], jit: bool) -> Any:
    return run_adamx(tx, params, grads, jit=jit, state=state)


def round_trip(
    name: str,
    kwargs: dict[str, Any],
    jit: bool,
    scaling: dict[str, Any] | None = None,
    grads: list[Any] | None = None,
) -> None:
    params = random_params(0)
    grads = grads or random_grads(0, BEFORE + AFTER, params)
    optimizer, variables = keras_setup(params, kwargs, scaling)
    keras_calls(optimizer, variables, grads[:BEFORE], jit)
    moved_params = as_tree(params, variables)

    tx, state = adamx.from_keras_optimizer(optimizer, moved_params)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if (
        not inner.gradient_accumulation_steps
    ):  # with it, Keras reads its raw counter (docs/keras.md)
        np.testing.assert_allclose(
            adamx.current_learning_rate(state), float(inner.learning_rate), rtol=3e-7
        )
    ours, state = adamx_calls(tx, moved_params, state, grads[BEFORE:], jit)
    keras_calls(optimizer, variables, grads[BEFORE:], jit)
    theirs = as_tree(params, variables)

    pairs = [(ours, theirs)]
    if inner.use_ema:
        pairs.append(
            (adamx.ema_params(state), as_tree(params, inner._model_variables_moving_average))
        )
    for actual, expected in pairs:
        if jit:
            deviation = assert_close_to_keras(actual, expected, moved_params)
            print(f"{name}: largest deviation after the move {deviation:.3g}")
        else:
            assert_bit_equal(actual, expected)
    assert int(adamx.iterations(state)) == int(inner.iterations)


@pytest.mark.parametrize("jit", [False, True], ids=["op-by-op", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_per_argument(name: str, jit: bool) -> None:
    round_trip(name, CASES[name], jit)


@pytest.mark.parametrize("jit", [False, True], ids=["op-by-op", "jit"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["", "accumulation+ema"])
def test_round_trip_loss_scale_optimizer(jit: bool, accumulate: bool) -> None:
    """Non-finite calls before and after the move; growth every 3 finite calls."""
    params = random_params(0)
    grads = random_grads(0, BEFORE + AFTER, params, scale=100.0)
    for call in (2, 9, 10):
        grads[call] = jax.tree.map(lambda g: g * np.inf, grads[call])
    kwargs: dict[str, Any] = {"learning_rate": 0.01}
    if accumulate:
        kwargs |= {"gradient_accumulation_steps": 2, "use_ema": True}
    scaling = {"initial_scale": 64.0, "dynamic_growth_steps": 3}
    name = "LossScaleOptimizer" + ("+accumulation+ema" if accumulate else "")
    round_trip(name, kwargs, jit, scaling=scaling, grads=grads)


@pytest.mark.parametrize("jit", [False, True], ids=["op-by-op", "jit"])
def test_round_trip_amsgrad_after_gradients_shrink(jit: bool) -> None:
    """v-hat then holds an older, larger second moment than v: it must move as v-hat."""
    params = random_params(0)
    grads = random_grads(0, BEFORE + AFTER, params)
    grads = [
        jax.tree.map(lambda g, c=call: g * (10.0 if c < BEFORE else 0.1), g)
        for call, g in enumerate(grads)
    ]
    round_trip(
        "amsgrad, shrinking gradients", {"learning_rate": 0.01, "amsgrad": True}, jit, grads=grads
    )


def test_round_trip_adamw() -> None:
    params = random_params(0)
    grads = random_grads(0, BEFORE + AFTER, params)
    variables = [
        keras.Variable(np.asarray(x), name=n)
        for x, n in zip(jax.tree.leaves(params), short_names(params), strict=True)
    ]
    optimizer = keras.optimizers.AdamW(0.01)
    optimizer.build(variables)
    keras_calls(optimizer, variables, grads[:BEFORE], jit=False)
    moved = as_tree(params, variables)
    tx, state = adamx.from_keras_optimizer(optimizer, moved)
    ours, _ = adamx_calls(tx, moved, state, grads[BEFORE:], jit=False)
    keras_calls(optimizer, variables, grads[BEFORE:], jit=False)
    assert_bit_equal(ours, as_tree(params, variables))


def test_changed_float_learning_rate_moves_with_the_state() -> None:
    params = random_params(0)
    grads = random_grads(0, 4, params)
    optimizer, variables = keras_setup(params, {"learning_rate": 0.01}, None)
    keras_calls(optimizer, variables, grads[:2], jit=False)
    optimizer.learning_rate = 0.003
    moved = as_tree(params, variables)
    tx, state = adamx.from_keras_optimizer(optimizer, moved)
    assert float(adamx.current_learning_rate(state)) == float(np.float32(0.003))
    ours, _ = adamx_calls(tx, moved, state, grads[2:], jit=False)
    keras_calls(optimizer, variables, grads[2:], jit=False)
    assert_bit_equal(ours, as_tree(params, variables))


def test_exclusion_by_variable_moves_as_a_mask() -> None:
    params = random_params(0)
    grads = random_grads(0, 6, params)
    optimizer, variables = keras_setup(params, {"learning_rate": 0.05, "weight_decay": 0.2}, None)
    optimizer.exclude_from_weight_decay(var_list=[variables[2]])  # the embedding
    keras_calls(optimizer, variables, grads[:3], jit=False)
    moved = as_tree(params, variables)
    tx, state = adamx.from_keras_optimizer(optimizer, moved)
    ours, _ = adamx_calls(tx, moved, state, grads[3:], jit=False)
    keras_calls(optimizer, variables, grads[3:], jit=False)
    assert_bit_equal(ours, as_tree(params, variables))


def test_from_a_keras_file(tmp_path: Path) -> None:
    """A model trained with `fit`, saved with its optimizer, loaded, moved, continued."""
    keras.utils.set_random_seed(0)  # fit shuffles batches with Keras's global generator
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="d1"), keras.layers.Dense(1, name="d2")]
    )
    optimizer = keras.optimizers.Adam(
        0.01, amsgrad=True, use_ema=True, gradient_accumulation_steps=3, weight_decay=0.01
    )
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 8 calls: mid-accumulation
    model.save(tmp_path / "run.keras")

    loaded = keras.saving.load_model(tmp_path / "run.keras")
    params = adamx.keras_params(loaded.trainable_variables)
    assert set(params) == {"d1", "d2"}
    tx, state = adamx.from_keras_optimizer(loaded.optimizer, params)
    assert int(adamx.iterations(state)) == 8 // 3

    grads = random_grads(3, 8, params)
    ours, state = adamx_calls(tx, params, state, grads, jit=False)

    # Keras takes gradients in its build order (d1/kernel first); our leaves are sorted.
    variables = list(loaded.optimizer._trainable_variables)
    paths = [path for path, _ in flat_paths(params)]
    order = [paths.index(v.path) for v in variables]
    keras_grads = [[jax.tree.leaves(g)[i] for i in order] for g in grads]
    keras_calls(loaded.optimizer, variables, keras_grads, jit=False)
    averages = loaded.optimizer._model_variables_moving_average
    for tree, values in ((ours, variables), (adamx.ema_params(state), averages)):
        for i, value in zip(order, values, strict=True):
            # One ulp at most: biases start at 0, and weight decay's `p_new - p` update can
            # round once where a step is large relative to |p| (docs/reliability.md).
            np.testing.assert_allclose(
                jax.tree.leaves(tree)[i], np.asarray(value.value), rtol=1.2e-7, atol=1e-9
            )
    # Keras does not save exclusions: the loaded optimizer decays biases again, and so do we.
    assert "d1/bias" in adamx.decayed_paths(params, None)


def test_from_keras_config_forms() -> None:
    optimizer = keras.optimizers.Adam(
        schedules.ExponentialDecay(0.01, 5, 0.5), amsgrad=True, use_ema=True
    )
    for config in (optimizer.get_config(), keras.optimizers.serialize(optimizer)):
        tx = adamx.from_keras_config(config)
        state = tx.init({"w": np.ones(2, np.float32)})
        assert adamx.current_learning_rate(state) == np.float32(0.01)
        assert adamx.ema_params(state) is not None
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(), initial_scale=4.0)
    for config in (lso.get_config(), keras.optimizers.serialize(lso)):
        state = adamx.from_keras_config(config).init({"w": np.ones(2, np.float32)})
        assert float(state.loss_scale) == 4.0


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"class_name": "SGD", "config": {}}, ValueError, "'SGD'"),
        (keras.optimizers.serialize(keras.optimizers.SGD()), ValueError, "'SGD'"),
        ({"learning_rate": 0.01, "momentum": 0.9}, ValueError, r"Unknown key\(s\).*momentum"),
        ({"learning_rate": 0.01, "jit_compile": True}, ValueError, "jit_compile"),
        (
            {
                "class_name": "LossScaleOptimizer",
                "config": {"inner_optimizer": {"class_name": "SGD", "config": {}}},
            },
            ValueError,
            "wraps 'SGD'",
        ),
        ({"inner_optimizer": {}, "dynamic": False}, ValueError, "dynamic"),
        ({"learning_rate": {"class_name": "__lambda__", "config": {}}}, ValueError, "callable"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate"),
        ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "Only one of"),
        ({"gradient_accumulation_steps": 2.5}, TypeError, "gradient_accumulation_steps"),
        ("adam", TypeError, "dict"),
    ],
    ids=lambda value: None,
)
def test_from_keras_config_rejects_clearly(config: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        adamx.from_keras_config(config)


def test_keras_values_with_keras_meaning() -> None:
    """Values Keras accepts and treats specially mean the same after the move."""
    params = random_params(0)
    grads = random_grads(0, 8, params)
    special = {
        "clipvalue": -1.0,  # Keras: no clipping
        "use_ema": False,
        "ema_momentum": 5.0,  # ignored without use_ema
        "ema_overwrite_frequency": 0,
        "gradient_accumulation_steps": 0,  # no accumulation
    }
    optimizer, variables = keras_setup(params, {"learning_rate": 0.01, **special}, None)
    tx = adamx.from_keras_config(optimizer.get_config())
    ours, _ = adamx_calls(tx, params, tx.init(params), grads, jit=False)
    keras_calls(optimizer, variables, grads, jit=False)
    assert_bit_equal(ours, as_tree(params, variables))
    # ema_overwrite_frequency=0 with use_ema: Keras on JAX overwrites on every call.
    optimizer, variables = keras_setup(
        params, {"use_ema": True, "ema_overwrite_frequency": 0, "ema_momentum": 0.5}, None
    )
    tx = adamx.from_keras_config(optimizer.get_config())
    ours, _ = adamx_calls(tx, params, tx.init(params), grads, jit=False)
    keras_calls(optimizer, variables, grads, jit=False)
    assert max_abs_diff(ours, as_tree(params, variables)) <= 1e-7


def test_from_keras_optimizer_rejects_clearly() -> None:
    params = random_params(0)
    optimizer, _ = keras_setup(params, {}, None)
    with pytest.raises(TypeError, match="Keras Adam"):
        adamx.from_keras_optimizer(keras.optimizers.SGD(), params)
    with pytest.raises(ValueError, match="not built"):
        adamx.from_keras_optimizer(keras.optimizers.Adam(), params)
    missing = {k: v for k, v in params.items() if k != "scale"}
    with pytest.raises(ValueError, match=r"Keras variables with no parameter: \['scale'\]"):
        adamx.from_keras_optimizer(optimizer, missing)
    extra = params | {"head": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="parameter 'head' matches no Keras variable"):
        adamx.from_keras_optimizer(optimizer, extra)
    reshaped = params | {"embedding": np.ones((2, 5), np.float32)}
    with pytest.raises(ValueError, match=r"'embedding' has shape \(2, 5\).*\(5, 2\)"):
        adamx.from_keras_optimizer(optimizer, reshaped)


def test_keras_params_rejects_colliding_paths() -> None:
    variables = [keras.Variable(np.ones(2), name="w"), keras.Variable(np.ones(2), name="w")]
    with pytest.raises(ValueError, match="path 'w'"):
        adamx.keras_params(variables)
