"""adamx: Keras 3's Adam, every argument, as composable Optax gradient transformations."""

from adamx._accumulation import AccumulateGradientsState, accumulate_gradients
from adamx._adam import adam
from adamx._capabilities import Committable, TakesLossScale
from adamx._clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamx._ema import ParamsEmaState, ema_of_params, ema_params, finalize_variable_values
from adamx._exclusion import Exclusion
from adamx._grouping import GroupedParams, group_leaves, ungroup
from adamx._hyperparams import LearningRate, Schedule
from adamx._keras import from_keras_config, from_keras_optimizer, keras_params
from adamx._loss_scale import (
    DynamicLossScaleState,
    StaticLossScaleState,
    loss_scale_optimizer,
    scale_loss,
    static_loss_scale,
)
from adamx._missing_gradients import skip_missing_gradients
from adamx._moments import ScaleByKerasAdamState, scale_by_keras_adam
from adamx._nonfinite import SkipNonFiniteState, skip_nonfinite_updates
from adamx._rounding import StochasticRoundParamsState, stochastic_round_params
from adamx._sharding import sharding_report, state_shardings
from adamx._state import current_learning_rate, iterations
from adamx._weight_decay import (
    DecoupledWeightDecayState,
    decay_mask,
    decayed_paths,
    decoupled_weight_decay,
)

__version__ = "0.1.0"

__all__ = [
    "AccumulateGradientsState",
    "Committable",
    "DecoupledWeightDecayState",
    "DynamicLossScaleState",
    "Exclusion",
    "GroupedParams",
    "LearningRate",
    "ParamsEmaState",
    "ScaleByKerasAdamState",
    "Schedule",
    "SkipNonFiniteState",
    "StaticLossScaleState",
    "StochasticRoundParamsState",
    "TakesLossScale",
    "accumulate_gradients",
    "adam",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "current_learning_rate",
    "decay_mask",
    "decayed_paths",
    "decoupled_weight_decay",
    "ema_of_params",
    "ema_params",
    "finalize_variable_values",
    "from_keras_config",
    "from_keras_optimizer",
    "group_leaves",
    "iterations",
    "keras_params",
    "loss_scale_optimizer",
    "scale_by_keras_adam",
    "scale_loss",
    "sharding_report",
    "skip_missing_gradients",
    "skip_nonfinite_updates",
    "state_shardings",
    "static_loss_scale",
    "stochastic_round_params",
    "ungroup",
]

# `help(adamx.adam)` and the API reference name the public module, not the private one each
# function is written in.
for _name in __all__:
    if callable(_function := globals()[_name]) and hasattr(_function, "__code__"):
        _function.__module__ = __name__
del _name, _function
