"""An exponential moving average of the parameters (Keras's `use_ema`), with overwrite."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx._commit import check_commit, commit_state
from adamx._rounding import random_bits, round_to, rounding_key
from adamx._state import find_state
from adamx._trees import as_arrays, check_same_structure, compute_dtype, leaf_indices, zeros_in
from adamx._validation import check_dtype, check_int, check_real, check_seed


class ParamsEmaState(NamedTuple):
    """State of `ema_of_params`: Keras's raw call counter and the moving average."""

    calls: jax.Array  # int32[]: calls so far (Keras's raw counter `it`)
    average: optax.Params  # like params: the moving average (Keras `<var>_average`)
    rounding_seed: jax.Array | None = None  # uint32[] with stochastic rounding, else None


def ema_of_params(
    ema_momentum: float = 0.99,
    ema_overwrite_frequency: int | None = None,
    *,
    steps_per_update: int = 1,
    ema_dtype: Any = None,
    rounding_seed: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Tracks an EMA of the parameters after each update; optionally overwrites them with it.

    Keras's `use_ema`, `ema_momentum` and `ema_overwrite_frequency`. With `p' = p + u` the
    parameters after this call's update and `k` the number of real updates before this call
    (`calls // steps_per_update`)::

        mu  = ema_momentum * [k != 0]        # the first update copies: average = p'
        avg <- mu * avg + (1 - mu) * p'
        if ema_overwrite_frequency and (k + 1) % ema_overwrite_frequency == 0:
            emit avg - p                     # so that apply_updates sets p to the average
            avg <- p + (avg - p)             # the parameters as set (== avg unless |avg| << |p|)
        else:
            emit u unchanged

    It runs on every call, accumulation micro-steps included (`steps_per_update` is
    `gradient_accumulation_steps`, so `k` counts real updates, like Keras's `iterations`). optax
    has no parameter EMA (`optax.ema` averages updates). Differences from Keras: the overwrite
    is a selection, so a non-finite average never leaks into parameters that are not being
    overwritten; float16/bfloat16 averages are computed in float32 and stored in their dtype
    (`ema_dtype`, the parameters' by default; the blend runs in the wider of the two), rounded
    to nearest, or stochastically given `rounding_seed` (see `adamx.scale_by_keras_adam`).
    Read the average with `adamx.ema_params(state)`. Given `commit` (see `adamx.Committable`), a
    call where it is False keeps the state and passes the updates through (no overwrite).

    Args:
      ema_momentum: weight of the old average, in [0, 1].
      ema_overwrite_frequency: None, or an integer >= 1: overwrite every that many updates.
      steps_per_update: calls per real update (the accumulation steps), an integer >= 1.
      ema_dtype: storage dtype of the average; None keeps the parameters'.
      rounding_seed: None (round to nearest) or an integer in [0, 2**32): round the stored
        average stochastically (see `adamx.scale_by_keras_adam`).

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.ema_of_params(0.5)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(jnp.array([1.0]), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> adamx.ema_params(state)  # 2 (the first call copies), then 0.5 * 2 + 0.5 * 3
      Array([2.5], dtype=float32)
    """
    check_real("ema_momentum", ema_momentum, low=0.0, high=1.0)
    if ema_overwrite_frequency is not None:
        check_int("ema_overwrite_frequency", ema_overwrite_frequency, low=1)
    check_int("steps_per_update", steps_per_update, low=1)
    check_dtype("ema_dtype", ema_dtype)
    check_seed("rounding_seed", rounding_seed)
    seed = None if rounding_seed is None else np.uint32(rounding_seed)

    def init_fn(params: optax.Params) -> ParamsEmaState:
        average = zeros_in(params, ema_dtype)
        seed_leaf = None if seed is None else jnp.asarray(seed)
        return ParamsEmaState(jnp.zeros([], jnp.int32), average, seed_leaf)

    def update_fn(
        updates: optax.Updates,
        state: ParamsEmaState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ParamsEmaState]:
        del extra_args
        commit = check_commit(commit)
        if params is None:
            raise ValueError("ema_of_params needs `params`: call update(grads, state, params).")
        check_same_structure("params", params, "the optimizer state's EMA", state.average)
        updates, params = as_arrays(updates), as_arrays(params)
        k = state.calls // steps_per_update
        calls = commit_state(commit, optax.safe_increment(state.calls), state.calls)
        key = None if state.rounding_seed is None else rounding_key(state.rounding_seed, calls, 4)
        leaf_index = leaf_indices(state.average)

        def blend(avg: jax.Array, p: jax.Array, leaf: int) -> jax.Array:
            dtype = compute_dtype(avg.dtype, p.dtype)
            mu = (k != 0).astype(dtype) * ema_momentum
            bits = None if key is None else random_bits(key, leaf, avg.shape)
            return round_to(mu * avg.astype(dtype) + (1 - mu) * p.astype(dtype), avg.dtype, bits)

        def new_state(average: Any) -> ParamsEmaState:
            average = commit_state(commit, average, state.average)
            return ParamsEmaState(calls, average, state.rounding_seed)

        if ema_overwrite_frequency is None:
            new_params = optax.apply_updates(params, updates)
            return updates, new_state(jax.tree.map(blend, state.average, new_params, leaf_index))
        overwrite = (k + 1) % ema_overwrite_frequency == 0
        if commit is not None:
            overwrite = overwrite & commit

        def emitted(u: jax.Array, avg: jax.Array, p: jax.Array, leaf: int) -> jax.Array:
            target = blend(avg, optax.apply_updates(p, u), leaf)
            return jnp.where(overwrite, (target - p).astype(u.dtype), u)

        updates = jax.tree.map(emitted, updates, state.average, params, leaf_index)
        # The average is read back from the parameters this call produces (the caller's own
        # `p + u`, which XLA shares), so the step's expensive `u` feeds one kernel and needs
        # no parameter-sized temporary. After an overwrite it is the parameters, as in Keras.
        new_params = optax.apply_updates(params, updates)
        average = jax.tree.map(
            lambda avg, p, leaf: jnp.where(overwrite, p.astype(avg.dtype), blend(avg, p, leaf)),
            state.average,
            new_params,
            leaf_index,
        )
        return updates, new_state(average)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_params(state: Any) -> optax.Params:
    """The EMA of the parameters held in an optimizer state, for evaluation.

    Non-destructive: the training parameters and the state are left as they are. Raises a
    ValueError if the state has no EMA (build the optimizer with `use_ema=True`).

    Args:
      state: the state of an optimizer built with `use_ema=True` (or with
        `ema_of_params`), however wrapped.

    Returns:
      The average, a pytree shaped like the parameters.
    """
    ema = find_state(state, ParamsEmaState)
    if ema is None:
        raise ValueError("This optimizer state holds no EMA: build it with `use_ema=True`.")
    return ema.average


def finalize_variable_values(params: optax.Params, state: Any) -> optax.Params:
    """Keras's `finalize_variable_values`: the EMA parameters if EMA is on, else `params`.

    Keras assigns the averages to the model's variables at the end of `fit`; here the
    parameters to continue with are returned. Without EMA the parameters come back unchanged,
    as Keras leaves them.

    Args:
      params: the current parameters, returned as they are without EMA.
      state: the optimizer state.

    Returns:
      The EMA parameters if the state holds an EMA, else `params`.
    """
    ema = find_state(state, ParamsEmaState)
    if ema is None:
        return params
    check_same_structure("params", params, "the optimizer state's EMA", ema.average)
    return ema.average
