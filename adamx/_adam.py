"""`adam(...)`: Keras 3's `keras.optimizers.Adam`, argument for argument, as one optax chain."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adamx._accumulation import accumulate_gradients
from adamx._clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamx._commit import mark_honours_commit, zero_uncommitted
from adamx._ema import ema_of_params
from adamx._hyperparams import LearningRate, at_keras_step, learning_rate_schedule
from adamx._loss_scale import (
    is_float32_power_of_two,
    kept_loss_scale,
    mark_takes_loss_scale,
    unscale_gradients,
    with_loss_scale,
)
from adamx._missing_gradients import skip_missing_gradients
from adamx._moments import (
    ScaleByKerasAdamState,
    check_beta,
    check_mu_dtype,
    scale_by_keras_adam,
)
from adamx._nonfinite import skip_nonfinite_updates
from adamx._state import find_state
from adamx._trees import check_same_structure
from adamx._validation import check_bool, check_int, check_optional_real, check_real
from adamx._weight_decay import Exclusion, check_exclusion, decoupled_weight_decay


def _check_arguments(**args: Any) -> None:
    """Keras's checks, in Keras's order, then the ones Keras forgets."""
    if args["gradient_accumulation_steps"] is not None:
        check_int("gradient_accumulation_steps", args["gradient_accumulation_steps"], low=2)
    check_bool("use_ema", args["use_ema"])
    check_real("ema_momentum", args["ema_momentum"], low=0.0, high=1.0)
    if args["ema_overwrite_frequency"] is not None:
        check_int("ema_overwrite_frequency", args["ema_overwrite_frequency"], low=1)
    clip_args = {k: args[k] for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    if sum(value is not None for value in clip_args.values()) > 1:
        received = ", ".join(f"{k}={v}" for k, v in clip_args.items())
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
            f"Received: {received}"
        )
    for key, value in clip_args.items():
        check_optional_real(key, value, low=0.0, low_open=True)
    name = args["name"]
    if not isinstance(name, str) or "/" in name or not name:
        raise ValueError(
            "Argument `name` must be a non-empty string and cannot contain character `/`. "
            f"Received: name={name!r}"
        )
    learning_rate_schedule(args["learning_rate"])  # checks a number's range
    check_beta("beta_1", args["beta_1"])
    check_beta("beta_2", args["beta_2"])
    check_real("epsilon", args["epsilon"], low=0.0, low_open=True)
    check_bool("amsgrad", args["amsgrad"])
    check_optional_real("weight_decay", args["weight_decay"], low=0.0)
    check_optional_real("loss_scale_factor", args["loss_scale_factor"], low=0.0, low_open=True)
    check_bool("nesterov", args["nesterov"])
    check_exclusion(args["exclude_from_weight_decay"])
    if args["exclude_from_weight_decay"] is not None and args["weight_decay"] is None:
        raise ValueError(
            "`exclude_from_weight_decay` has no effect without `weight_decay`; set "
            "`weight_decay` (a float >= 0) or drop the exclusion."
        )
    check_mu_dtype(args["mu_dtype"])
    check_bool("skip_nonfinite", args["skip_nonfinite"])


def _clipping(
    clipnorm: float | None, clipvalue: float | None, global_clipnorm: float | None
) -> optax.GradientTransformation | None:
    if clipnorm is not None:
        return clip_by_norm(clipnorm)
    if clipvalue is not None:
        return clip_by_value(clipvalue)
    if global_clipnorm is not None:
        return clip_by_global_norm(global_clipnorm)
    return None


def _checked_and_named(
    name: str, tx: optax.GradientTransformationExtraArgs
) -> optax.GradientTransformationExtraArgs:
    """Checks tree structures up front (a clear error, not a deep tree-map one) and names the
    update in profiles."""

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        if params is not None:
            check_same_structure("updates", updates, "params", params, none_is_leaf=True)
        adam_state = find_state(state, ScaleByKerasAdamState)
        if adam_state is not None:
            check_same_structure(
                "updates",
                updates,
                "the optimizer state's moments",
                adam_state.nu,
                none_is_leaf=True,
            )
        with jax.named_scope(name):
            return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def adam(
    learning_rate: LearningRate = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    use_ema: bool = False,
    ema_momentum: float = 0.99,
    ema_overwrite_frequency: int | None = None,
    loss_scale_factor: float | None = None,
    gradient_accumulation_steps: int | None = None,
    name: str = "adam",
    *,
    nesterov: bool = False,
    exclude_from_weight_decay: Exclusion = None,
    mu_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Keras 3's `keras.optimizers.Adam` as an optax transformation: same arguments, same numbers.

    Use it like any optax optimizer::

        tx = adamx.adam(learning_rate=1e-3, weight_decay=0.004, global_clipnorm=1.0)
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)

    One call runs Keras's recipe, in Keras's order::

        g <- g / loss_scale_factor                     unscale_gradients
        drop parameters whose gradient is None         skip_missing_gradients
        sum N calls, continue with the mean            accumulate_gradients
          g <- clip(g)                                 clip_by_norm | _by_value | _by_global_norm
          m, v, step = (m*alpha) / (sqrt(v) + eps)     scale_by_keras_adam (lr inside alpha)
          p <- (p - p*weight_decay*lr) - step          decoupled_weight_decay
        avg <- EMA of p; every f updates p <- avg      ema_of_params

    `learning_rate` is a number (an `int` is fine), an optax schedule, a Keras
    `LearningRateSchedule` or a zero-argument callable; schedules are read at Keras's raw call
    counter (with accumulation, the k-th update reads step `k*N - 1`). Bias correction counts
    real updates. Arguments Keras rejects are rejected here too, and so are values Keras
    accepts but cannot mean: a negative learning rate, `epsilon <= 0`, betas outside [0, 1),
    clipping thresholds <= 0 (pass None to disable), a non-integer
    `gradient_accumulation_steps`.

    Beyond Keras (keyword-only): `nesterov` (optax's Nesterov Adam, with epsilon-hat),
    `exclude_from_weight_decay` (patterns searched in `/`-joined key paths, a boolean pytree, or
    a callable; see `adamx.decayed_paths`), `mu_dtype` (dtype of the first moment) and
    `skip_nonfinite` (a call with a NaN or infinite gradient then changes nothing: parameters
    and every state leaf stay bit-identical, see `adamx.skip_nonfinite_updates`; by default, as
    in Keras, such a step is applied and the parameters become NaN). float16/bfloat16
    parameters compute their hyper-parameter arithmetic in float32 (Keras
    computes it in the parameter dtype, where bfloat16 parameters never move with the default
    `beta_2`). `name` names the update in profiles (`jax.named_scope`). Read counters with
    `adamx.iterations(state)` and `adamx.current_learning_rate(state)`. The update accepts a
    `commit` extra argument (a boolean scalar; where it is False the call changes nothing), which
    `skip_nonfinite_updates`, `loss_scale_optimizer` and accumulation pass down so that XLA
    updates the state in place (see `adamx._commit`).

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.adam(learning_rate=0.5)
      >>> params = jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> updates, state = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([0.50000495, 1.5000036 , 2.5000036 , 3.500004  ], dtype=float32)
    """
    _check_arguments(**locals())
    rate = at_keras_step(learning_rate_schedule(learning_rate), gradient_accumulation_steps)

    update = [
        _clipping(clipnorm, clipvalue, global_clipnorm),
        scale_by_keras_adam(
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            learning_rate=rate,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
        ),
        optax.scale(-1.0),
    ]
    if weight_decay is not None:
        update.append(
            decoupled_weight_decay(
                weight_decay,
                learning_rate=rate,
                exclude_from_weight_decay=exclude_from_weight_decay,
            )
        )
    # Every stateful step honours `commit`, and the last one zeroes uncommitted updates.
    update.append(zero_uncommitted())
    real_update = mark_honours_commit(optax.chain(*(t for t in update if t is not None)))
    # A norm clip unscales the gradients itself, for its reduction apart (adamx._loss_scale).
    if clipnorm or global_clipnorm:
        real_update = mark_takes_loss_scale(real_update)
    clip_unscales = (clipnorm or global_clipnorm) and not gradient_accumulation_steps

    steps: list[optax.GradientTransformation] = []
    if loss_scale_factor is not None:
        if clip_unscales and is_float32_power_of_two(loss_scale_factor):
            steps.append(kept_loss_scale(loss_scale_factor))
            real_update = with_loss_scale(real_update, loss_scale_factor)
        else:
            steps.append(unscale_gradients(loss_scale_factor))
    if gradient_accumulation_steps is not None:
        real_update = accumulate_gradients(real_update, gradient_accumulation_steps)
    steps.append(skip_missing_gradients(real_update))
    if use_ema:
        steps.append(
            ema_of_params(
                ema_momentum,
                ema_overwrite_frequency,
                steps_per_update=gradient_accumulation_steps or 1,
            )
        )
    tx = mark_honours_commit(optax.chain(*steps))
    if skip_nonfinite:
        tx = skip_nonfinite_updates(tx)
    tx = mark_honours_commit(_checked_and_named(name, tx))
    if clip_unscales and not skip_nonfinite and loss_scale_factor is None:
        tx = mark_takes_loss_scale(tx)
    return tx
