"""Moving from Keras: an optimizer from a Keras config, its state from a built Keras optimizer."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx._accumulation import AccumulateGradientsState
from adamx._adam import adam
from adamx._clipping import check_one_clip
from adamx._ema import ParamsEmaState
from adamx._exclusion import Exclusion
from adamx._hyperparams import KerasLearningRateState, at_keras_step, learning_rate_schedule
from adamx._loss_scale import DynamicLossScaleState, loss_scale_optimizer
from adamx._moments import ScaleByKerasAdamState
from adamx._trees import parameter_path, path_str
from adamx._weight_decay import DecoupledWeightDecayState

_ADAM_CLASSES = ("Adam", "AdamW")  # Keras 3's AdamW is Adam with another default weight_decay
# The keys of `Adam.get_config()`: `adamx.adam`'s arguments before the keyword-only ones.
_ADAM_KEYS = frozenset(
    name
    for name, parameter in inspect.signature(adam).parameters.items()
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
)
_LOSS_SCALE_KEYS = frozenset({"name", "inner_optimizer", "initial_scale", "dynamic_growth_steps"})
_CLIP_KEYS = ("clipnorm", "clipvalue", "global_clipnorm")


def _keras() -> Any:
    try:
        import keras
    except ImportError as error:  # pragma: no cover - keras is a test dependency
        raise ImportError("This needs Keras 3 with the JAX backend: pip install keras") from error
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"Keras runs on the {keras.backend.backend()!r} backend; Keras schedules and "
            "optimizers can only be moved to adamx from the JAX backend (KERAS_BACKEND=jax)."
        )
    return keras


def _class_and_config(config: Any) -> tuple[str, dict[str, Any]]:
    """Accepts `optimizer.get_config()` or `keras.optimizers.serialize(optimizer)`."""
    if not isinstance(config, Mapping):
        raise TypeError(f"`config` must be a dict from Keras, got {type(config).__name__}.")
    if "class_name" in config and "config" in config:
        return str(config["class_name"]), dict(config["config"])
    return ("LossScaleOptimizer" if "inner_optimizer" in config else "Adam"), dict(config)


def _check_keys(class_name: str, config: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"Unknown key(s) in the Keras {class_name} config: {unknown}. adamx honours "
            f"exactly these keys: {sorted(known)}."
        )


def _adam_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Keras's Adam config as `adamx.adam` arguments (in place), with Keras's meaning of each."""
    _check_keys("Adam", arguments, _ADAM_KEYS)
    rate = arguments.get("learning_rate")
    if isinstance(rate, Mapping):  # a schedule's config
        if rate.get("class_name") == "__lambda__" or "module" not in rate:
            raise ValueError(
                "The config's `learning_rate` is a serialized callable, which cannot be rebuilt "
                "safely; build the optimizer with `adamx.adam(learning_rate=...)` instead."
            )
        keras = _keras()
        try:
            arguments["learning_rate"] = keras.optimizers.schedules.deserialize(dict(rate))
        except Exception as error:
            raise ValueError(
                f"Could not rebuild the learning-rate schedule {rate.get('class_name')!r} from "
                f"its config ({error}). Register a custom schedule with Keras first."
            ) from error
    check_one_clip(*(arguments.get(key) for key in _CLIP_KEYS))
    for key in _CLIP_KEYS:  # Keras skips clipping for thresholds <= 0
        value = arguments.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            arguments[key] = None
    if not arguments.get("use_ema", False):  # Keras ignores these without use_ema
        arguments.pop("ema_momentum", None)
        arguments.pop("ema_overwrite_frequency", None)
        arguments["use_ema"] = False
    elif (frequency := arguments.get("ema_overwrite_frequency")) is True or frequency == 0:
        # Keras on JAX: `(k + 1) % 0 == 0` overwrites on every call, as 1 does; True is 1.
        arguments["ema_overwrite_frequency"] = 1
    steps = arguments.get("gradient_accumulation_steps")
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)
    # Keras: 0 and None both mean no accumulation; adam() rejects other values out of range.
    arguments["gradient_accumulation_steps"] = steps or None
    return arguments


def _arguments(config: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(adam arguments, loss_scale_optimizer arguments or None) for a Keras optimizer config."""
    class_name, body = _class_and_config(config)
    if class_name != "LossScaleOptimizer":
        if class_name not in _ADAM_CLASSES:
            raise ValueError(
                f"adamx moves Keras's Adam (and a LossScaleOptimizer wrapping it); this config "
                f"is for {class_name!r}."
            )
        return _adam_arguments(body), None
    _check_keys(class_name, body, _LOSS_SCALE_KEYS)
    if "inner_optimizer" not in body:
        raise ValueError("The LossScaleOptimizer config has no `inner_optimizer`.")
    wrapped, inner_body = _class_and_config(body["inner_optimizer"])
    if wrapped not in _ADAM_CLASSES:
        raise ValueError(f"adamx moves Keras's Adam; this LossScaleOptimizer wraps {wrapped!r}.")
    scaling = {k: v for k, v in body.items() if k in ("initial_scale", "dynamic_growth_steps")}
    return _adam_arguments(inner_body), scaling


def _build(
    adam_arguments: dict[str, Any],
    scaling: dict[str, Any] | None,
    exclude_from_weight_decay: Exclusion,
) -> optax.GradientTransformationExtraArgs:
    tx = adam(**adam_arguments, exclude_from_weight_decay=exclude_from_weight_decay)
    return tx if scaling is None else loss_scale_optimizer(tx, **scaling)


def from_keras_config(
    config: Mapping[str, Any], *, exclude_from_weight_decay: Exclusion = None
) -> optax.GradientTransformationExtraArgs:
    """The adamx optimizer equivalent to a Keras `Adam` (or `LossScaleOptimizer(Adam)`) config.

    Takes `optimizer.get_config()` or `keras.optimizers.serialize(optimizer)`. Every key is
    honoured with Keras's meaning, including the values Keras treats specially (a clipping
    threshold <= 0 disables clipping; `ema_*` are ignored without `use_ema`;
    `gradient_accumulation_steps` 0 means none; `ema_overwrite_frequency=0` overwrites on
    every call, as Keras does on JAX). A nested learning-rate schedule config is rebuilt as
    the Keras schedule object (needs Keras with the JAX backend). Unknown keys, another
    optimizer class and serialized lambdas raise a ValueError. Keras does not put
    `exclude_from_weight_decay` in its config; pass it here (see `adamx.adam`).

    Args:
      config: a Keras optimizer config: `optimizer.get_config()` (a flat dict) or
        `keras.optimizers.serialize(optimizer)` (with `class_name` and `config`).
      exclude_from_weight_decay: (keyword-only) what weight decay skips, as `adamx.adam` takes
        it; Keras keeps it out of its config.

    Returns:
      An adamx optimizer (`adamx.adam`, or `adamx.loss_scale_optimizer` around it).

    Example:
      >>> import adamx
      >>> tx = adamx.from_keras_config({"learning_rate": 0.01, "amsgrad": True})
      >>> adamx.from_keras_config({"class_name": "SGD", "config": {"momentum": 0.9}})
      Traceback (most recent call last):
      ...
      ValueError: adamx moves Keras's Adam (and a LossScaleOptimizer wrapping it); this config is for 'SGD'.
    """  # noqa: E501
    return _build(*_arguments(config), exclude_from_weight_decay)


def keras_params(variables: Sequence[Any]) -> dict[str, Any]:
    """A nested dict of arrays from Keras variables, keyed by their paths (`"d1/kernel"` ->
    `{"d1": {"kernel": ...}}`): pass `model.trainable_variables`.

    Args:
      variables: Keras variables, such as `model.trainable_variables`.

    Returns:
      A nested dict of arrays keyed by the variables' paths.
    """
    tree: dict[str, Any] = {}
    for variable in variables:
        *parents, leaf = str(variable.path).split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"Keras variable paths collide at {variable.path!r}.")
        if leaf in node:
            raise ValueError(f"Two Keras variables have the path {variable.path!r}.")
        node[leaf] = jnp.asarray(variable.value)
    return tree


def _match(params: Any, variables: Sequence[Any]) -> list[int]:
    """For each parameter leaf, the index of its Keras variable, matched by path."""
    keras_paths = [str(variable.path) for variable in variables]
    matches: list[int] = []
    problems: list[str] = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        ours = path_str(parameter_path(path))
        near = [  # equal paths, or one a '/'-suffix of the other
            j
            for j, theirs in enumerate(keras_paths)
            if f"/{theirs}".endswith(f"/{ours}") or f"/{ours}".endswith(f"/{theirs}")
        ]
        found = [j for j in near if keras_paths[j] == ours] or near  # equal paths first
        if len(found) != 1:
            where = [keras_paths[j] for j in found]
            what = f"several Keras variables {where}" if where else "no Keras variable"
            problems.append(f"parameter '{ours}' matches {what}")
            continue
        variable = variables[found[0]]
        if tuple(np.shape(leaf)) != tuple(variable.shape):
            problems.append(
                f"parameter '{ours}' has shape {tuple(np.shape(leaf))}, Keras variable "
                f"'{keras_paths[found[0]]}' has shape {tuple(variable.shape)}"
            )
        matches.append(found[0])
    unmatched = [theirs for j, theirs in enumerate(keras_paths) if j not in matches]
    if unmatched:
        problems.append(f"Keras variables with no parameter: {unmatched}")
    twice = sorted({keras_paths[j] for j in matches if matches.count(j) > 1})
    if twice:
        problems.append(f"Keras variables matched by several parameters: {twice}")
    if problems:
        raise ValueError(
            "The parameters do not match the variables the Keras optimizer was built with "
            "(matched by path: equal, or one a '/'-suffix of the other):\n  "
            + "\n  ".join(problems)
            + f"\nKeras variables: {keras_paths}"
        )
    return matches


def _replace_fields(state: Any, kind: type[Any], fields: Callable[[Any], dict[str, Any]]) -> Any:
    """`state` with `fields(node)` set on each sub-state `node` of type `kind`, the rest left be."""

    def replace(node: Any) -> Any:
        return node._replace(**fields(node)) if isinstance(node, kind) else node

    return jax.tree.map(replace, state, is_leaf=lambda node: isinstance(node, kind))


def _check_optimizer(optimizer: Any) -> tuple[Any, Any]:
    """(the Adam, the LossScaleOptimizer around it or None), with clear errors for the rest."""
    keras = _keras()
    scaler = optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None
    inner = optimizer.inner_optimizer if scaler is not None else optimizer
    if type(inner) not in (keras.optimizers.Adam, keras.optimizers.AdamW):
        raise TypeError(
            "from_keras_optimizer takes a Keras Adam (or a LossScaleOptimizer wrapping one); "
            f"got {type(inner).__name__}."
        )
    if not optimizer.built:
        raise ValueError(
            "The Keras optimizer is not built, so it holds no state to move. Build it with "
            "`optimizer.build(model.trainable_variables)` (or train a step), or use "
            "`adamx.from_keras_config(optimizer.get_config())` for a fresh optimizer."
        )
    return inner, scaler


def from_keras_optimizer(
    optimizer: Any, params: optax.Params
) -> tuple[optax.GradientTransformationExtraArgs, optax.OptState]:
    """`(tx, state)` that continue a Keras `Adam` run where it stands.

    `optimizer` is a built `keras.optimizers.Adam` (or `LossScaleOptimizer` around one), for
    example `keras.saving.load_model("run.keras").optimizer`. `params` is the JAX pytree of the
    model's trainable variables (see `adamx.keras_params`), matched to the variables the
    optimizer was built with by path: equal, or one a `/`-suffix of the other (`"d1/kernel"`
    matches Keras's `"sequential/d1/kernel"`). Every variable needs exactly one parameter of
    the same shape; otherwise a ValueError lists what did not match.

    Moved: the raw call counter (into the EMA and accumulation counters) and the update count,
    first and second moments, AMSGrad's v-hat, EMA averages, gradient accumulators, the
    dynamic loss scale and its growth counter, the current float learning rate, and the
    weight-decay exclusions (as a mask). `tx.update` on the returned state then computes what
    Keras's next call would.

    Args:
      optimizer: a built Keras `Adam`, or a `LossScaleOptimizer` around one.
      params: the model's trainable parameters as a JAX pytree (`adamx.keras_params` makes one
        from `model.trainable_variables`).

    Returns:
      A pair `(tx, state)`, the adamx optimizer and its state, continuing Keras's.
    """
    inner, scaler = _check_optimizer(optimizer)
    variables = list(inner._trainable_variables)
    indices = jax.tree.unflatten(jax.tree.structure(params), _match(params, variables))

    def slot(values: Sequence[Any], like: Any) -> Any:  # Keras's per-variable values, as `like`
        return jax.tree.map(
            lambda j, leaf: jnp.asarray(np.asarray(values[j].value), leaf.dtype), indices, like
        )

    exclusion = None
    if inner.weight_decay is not None:
        excluded = jax.tree.map(lambda j: not inner._use_weight_decay(variables[j]), indices)
        exclusion = excluded if any(jax.tree.leaves(excluded)) else None
    adam_arguments, scaling = _arguments(_keras().optimizers.serialize(optimizer))
    tx = _build(adam_arguments, scaling, exclusion)

    calls = int(np.asarray(inner._iterations.value))  # Keras's raw counter `it`
    steps = adam_arguments["gradient_accumulation_steps"]
    updates = calls // (steps or 1)
    keras_rate = learning_rate_schedule(adam_arguments.get("learning_rate", 0.001))
    rate = at_keras_step(keras_rate, steps)

    def count(value: int) -> jax.Array:
        return jnp.asarray(value, jnp.int32)

    own_fields: dict[type, Callable[[Any], dict[str, Any]]] = {  # each sub-state's, from Keras
        DynamicLossScaleState: lambda node: {
            "loss_scale": jnp.asarray(np.asarray(scaler.dynamic_scale.value), jnp.float32),
            "growth_count": count(int(np.asarray(scaler.step_counter.value))),
        },
        AccumulateGradientsState: lambda node: {
            "mini_step": count(calls % steps),
            "acc_grads": slot(inner._accumulated_gradients, node.acc_grads),
        },
        ScaleByKerasAdamState: lambda node: {
            "count": count(updates),
            "next_learning_rate": jnp.array(rate(count(updates)), jnp.float32),
            "mu": slot(inner._momentums, node.mu),
            "nu": slot(inner._velocities, node.nu),
            "nu_max": None if node.nu_max is None else slot(inner._velocity_hats, node.nu),
        },
        DecoupledWeightDecayState: lambda node: {"lr_step": count(updates)},
        KerasLearningRateState: lambda node: {
            "calls": count(calls),
            "keras_learning_rate": jnp.array(keras_rate(count(calls)), jnp.float32),
        },
        ParamsEmaState: lambda node: {
            "calls": count(calls),
            "average": slot(inner._model_variables_moving_average, node.average),
        },
    }
    state = tx.init(params)
    for kind, fields in own_fields.items():  # a wrapper's own fields leave its inner state be
        state = _replace_fields(state, kind, fields)
    return tx, state
