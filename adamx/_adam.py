"""`adam(...)`: Keras 3's `keras.optimizers.Adam`, argument for argument, as one optax chain."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adamx._accumulation import accumulate_gradients
from adamx._capabilities import like
from adamx._clipping import keras_clipping
from adamx._commit import commit_chain
from adamx._ema import ema_of_params
from adamx._exclusion import Exclusion
from adamx._hyperparams import (
    LearningRate,
    at_keras_step,
    keras_learning_rate,
    learning_rate_schedule,
)
from adamx._loss_scale import static_loss_scale
from adamx._missing_gradients import skip_missing_gradients
from adamx._moments import scale_by_keras_adam
from adamx._nonfinite import skip_nonfinite_updates
from adamx._rounding import stochastic_round_params
from adamx._trees import check_floating, check_same_shapes, check_same_structure
from adamx._validation import check_bool
from adamx._weight_decay import decoupled_weight_decay


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or "/" in name or not name:
        raise ValueError(
            "Argument `name` must be a non-empty string and cannot contain character `/`. "
            f"Received: name={name!r}"
        )


def _check_has_effect(*settings: tuple[str, Any, Any, str]) -> None:
    """`(name, value, feature, needs)`: a value for a feature that is off (None) is an error
    (Keras ignores such settings silently)."""
    for name, value, feature, needs in settings:
        if value is not None and feature is None:
            raise ValueError(
                f"`{name}` has no effect without `{needs}`; set `{needs}` or drop `{name}`. "
                "(Keras ignores such settings silently.)"
            )


def _checked_and_named(
    name: str, tx: optax.GradientTransformationExtraArgs
) -> optax.GradientTransformationExtraArgs:
    """Checks the inputs up front (a clear error naming the leaf, not a deep tree-map one, nor
    a silent broadcast or truncation) and names the update in profiles."""

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        if params is not None:
            check_same_structure("updates", updates, "params", params, none_is_leaf=True)
            check_floating(params)  # `optax.apply_updates` would truncate integer parameters
            check_same_shapes(updates, params)
        with jax.named_scope(name):
            return tx.update(updates, state, params, **extra_args)

    return like(tx)(tx.init, update_fn)


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
    nu_dtype: Any = None,
    ema_dtype: Any = None,
    accumulation_dtype: Any = None,
    rounding_seed: int | None = None,
    skip_nonfinite: bool = False,
    min_8bit_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Keras 3's `keras.optimizers.Adam` as an optax transformation: same arguments, same numbers.

    Use it like any optax optimizer::

        tx = adamx.adam(learning_rate=1e-3, weight_decay=0.004, global_clipnorm=1.0)
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)

    One call runs Keras's recipe, in Keras's order::

        drop parameters whose gradient is None         skip_missing_gradients
          g <- g / loss_scale_factor                   static_loss_scale
          sum N calls, continue with the mean          accumulate_gradients
            g <- clip(g)                               clip_by_{norm,value,global_norm}
            m, v, step = (m*alpha) / (sqrt(v) + eps)   scale_by_keras_adam (lr inside alpha)
            p <- (p - p*weight_decay*lr) - step        decoupled_weight_decay
            p <- stochastic round of p (with a seed)   stochastic_round_params
        avg <- EMA of p; every f updates p <- avg      ema_of_params

    Arguments Keras rejects are rejected here too, and so are values Keras accepts but cannot
    mean (a negative learning rate, `epsilon <= 0`, betas outside [0, 1), clipping thresholds
    <= 0, a non-integer `gradient_accumulation_steps`), with a ValueError or TypeError naming
    the argument. float16/bfloat16 parameters compute their hyper-parameter arithmetic in
    float32 (Keras computes it in the parameter dtype, where bfloat16 parameters never move
    with the default `beta_2`). Read Keras's counters with `adamx.iterations(state)` and
    `adamx.current_learning_rate(state)`.

    The result is `adamx.Committable`: its update takes a `commit` extra argument (a boolean
    scalar; where it is False the call changes nothing), which `skip_nonfinite_updates`,
    `loss_scale_optimizer` and accumulation pass down so that XLA updates the state in place.
    With `clipnorm` or `global_clipnorm` and neither accumulation, a static loss scale nor
    `skip_nonfinite`, it is also `adamx.TakesLossScale`: it takes the gradients of a scaled
    loss with `loss_scale=S` and unscales them inside the clip.

    Args:
      learning_rate: Keras's `learning_rate`: a number (an `int` is fine), an optax schedule
        `step -> rate`, a Keras `LearningRateSchedule` or a zero-argument callable; >= 0.
        Schedules are read at Keras's raw call counter (with accumulation, the k-th update
        reads step `k*N - 1`). Default 0.001.
      beta_1: decay of the first moment, in [0, 1). Default 0.9.
      beta_2: decay of the second moment, in [0, 1). Default 0.999.
      epsilon: Keras's epsilon-hat, added to the root of the uncorrected second moment; > 0.
        Default 1e-7.
      amsgrad: use the running maximum of the raw second moment (Keras's AMSGrad, not optax's).
        Default False.
      weight_decay: decoupled weight decay: each step first subtracts
        `p * weight_decay * learning_rate`; None (the default) for none.
      clipnorm: clip each gradient tensor to this L2 norm (> 0); None for no clipping. At most
        one of `clipnorm`, `clipvalue` and `global_clipnorm` may be set.
      clipvalue: clip each gradient element to `[-clipvalue, clipvalue]` (> 0); None for none.
      global_clipnorm: scale all gradients together to at most this joint L2 norm (> 0), with
        Keras's formula; None for none.
      use_ema: keep an exponential moving average of the parameters in the state (read it with
        `adamx.ema_params`). Default False.
      ema_momentum: weight of the old average, in [0, 1]. Default 0.99.
      ema_overwrite_frequency: with `use_ema`, overwrite the parameters with the average every
        this many updates (an integer >= 1); None (the default) never overwrites. An error
        without `use_ema=True` (Keras ignores it).
      loss_scale_factor: a static loss scale: the gradients are divided by it before anything
        else (multiply the loss with `adamx.scale_loss`); None (the default) for none.
      gradient_accumulation_steps: sum this many calls' gradients (an integer >= 2) and update
        with their mean on the last; None (the default) updates on every call.
      name: names the update in profiles (a `jax.named_scope`); a non-empty string without
        `/`. Default "adam".
      nesterov: (keyword-only, beyond Keras) optax's Nesterov Adam, with epsilon-hat. Default
        False.
      exclude_from_weight_decay: (keyword-only) the parameters weight decay skips: Keras's
        name patterns (regular expressions searched in each leaf's `/`-joined key path and in
        its last key), a boolean pytree shaped like the parameters (True = excluded), or a
        callable of the parameters returning one; see `adamx.decayed_paths`. Needs
        `weight_decay`. Default None (decay every leaf).
      mu_dtype: (keyword-only) storage dtype of the first moment; None keeps the parameters'.
        The arithmetic stays float32 or wider. A complex parameter's first moment stays
        complex, at least complex64 (`mu_dtype=jnp.bfloat16` stores it as complex64).
        `"8bit"` stores the moment of every tensor of `min_8bit_size` elements or more as
        8-bit codes with a float32 scale per block of up to 256 elements (see
        `adamx.scale_by_keras_adam`); not with a `rounding_seed`.
      nu_dtype: (keyword-only) storage dtype of the second moment and of v-hat; None keeps the
        parameters' (real) dtype; `"8bit"` as for `mu_dtype` (about 2.03 bytes per parameter
        for both moments).
      ema_dtype: (keyword-only) storage dtype of the EMA; None keeps the parameters'.
      accumulation_dtype: (keyword-only) storage dtype of the gradient sums; None: float32, or
        float64 if a parameter is.
      rounding_seed: (keyword-only) None rounds narrow storage to nearest; an integer in
        [0, 2**32) rounds the moments, the EMA and float16/bfloat16 parameters stochastically
        (unbiased) where they are stored narrower than they are computed, with bits from this
        seed, the step and each element's index; the updates of such parameters are then
        float32. See `adamx.scale_by_keras_adam` and `adamx.stochastic_round_params`.
      skip_nonfinite: (keyword-only) a call with a NaN or infinite gradient changes nothing:
        parameters and every state leaf stay bit-identical, and the state counts the skip (see
        `adamx.skip_nonfinite_updates`). Default False: as in Keras, such a step is applied
        and the parameters become NaN.
      min_8bit_size: (keyword-only) with an `"8bit"` moment, the fewest elements a tensor needs
        to be stored in 8 bits (smaller ones keep the parameters' dtype); None: 4096.

    Returns:
      An optax `GradientTransformationExtraArgs`, also an `adamx.Committable`, with
      `init(params)` and `update(grads, state, params)`, whose updates `optax.apply_updates`
      adds to the parameters.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.adam(learning_rate=0.5)
      >>> params = jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> updates, state = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([0.50000495, 1.5000036 , 2.5000036 , 3.500004  ], dtype=float32)
    """
    accumulation = gradient_accumulation_steps
    check_bool("use_ema", use_ema)
    check_bool("skip_nonfinite", skip_nonfinite)
    _check_name(name)
    schedule = learning_rate_schedule(learning_rate)
    rate = at_keras_step(schedule, accumulation)  # read at Keras's raw counter

    # Keras's recipe (spec, section 3), one line per feature, the spec's step on the right.
    real_update = [
        keras_clipping(clipnorm, clipvalue, global_clipnorm),  # 6. clip
        scale_by_keras_adam(  # 8. the Adam step, the learning rate inside
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            learning_rate=rate,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            rounding_seed=rounding_seed,
            min_8bit_size=min_8bit_size,
        ),
        optax.scale(-1.0),
    ]
    if weight_decay is not None:  # 7. p - (p*wd)*lr, then the step
        real_update.append(
            decoupled_weight_decay(
                weight_decay,
                learning_rate=rate,
                exclude_from_weight_decay=exclude_from_weight_decay,
            )
        )
    if rounding_seed is not None:  # beyond Keras: narrow parameters land stochastically
        real_update.append(stochastic_round_params(rounding_seed))
    update = commit_chain(*real_update)
    if accumulation is not None:  # 5. sum N calls, update with the mean
        update = accumulate_gradients(update, accumulation, accumulation_dtype=accumulation_dtype)
    if loss_scale_factor is not None:  # 4. unscale
        update = static_loss_scale(update, loss_scale_factor)
    # 10, 11. EMA of every parameter and its overwrite; its arguments are checked even when off.
    ema = ema_of_params(
        ema_momentum,
        ema_overwrite_frequency,
        steps_per_update=accumulation or 1,
        ema_dtype=ema_dtype,
        rounding_seed=rounding_seed,
    )
    _check_has_effect(
        ("exclude_from_weight_decay", exclude_from_weight_decay, weight_decay, "weight_decay"),
        ("accumulation_dtype", accumulation_dtype, accumulation, "gradient_accumulation_steps"),
        ("ema_overwrite_frequency", ema_overwrite_frequency, use_ema or None, "use_ema=True"),
        ("ema_dtype", ema_dtype, use_ema or None, "use_ema=True"),
    )
    # Keras's `optimizer.learning_rate` reads a schedule at the raw counter, which micro-steps
    # advance (without them, or for a constant, it is the Adam state's `next_learning_rate`).
    accumulates_a_schedule = accumulation is not None and callable(learning_rate)
    keras_rate = keras_learning_rate(schedule) if accumulates_a_schedule else None
    # 2. a parameter whose gradient is None gets no update (it still takes part in the EMA)
    tx = commit_chain(
        skip_missing_gradients(update),
        ema if use_ema else None,
        keras_rate,
    )
    if skip_nonfinite:  # beyond Keras: a call with a non-finite gradient changes nothing
        tx = skip_nonfinite_updates(tx)
    return _checked_and_named(name, tx)
