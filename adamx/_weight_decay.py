"""Keras's decoupled weight decay, applied before the step, with exclusion by name pattern."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._commit import check_commit, commit_state
from adamx._exclusion import Exclusion, check_exclusion, leaf_decay_mask
from adamx._grouping import GroupedParams, group_flags
from adamx._hyperparams import LearningRate, learning_rate_schedule
from adamx._trees import as_arrays, compute_dtype, parameter_path, path_str
from adamx._validation import check_real


class DecoupledWeightDecayState(NamedTuple):
    """State of `decoupled_weight_decay`: where the learning-rate schedule is read."""

    lr_step: jax.Array  # int32[]: updates applied so far: where the learning-rate schedule is read


def decay_mask(params: Any, exclude_from_weight_decay: Exclusion = None) -> Any:
    """A pytree of Python bools shaped like `params`: True where the leaf is decayed.

    For `adamx.group_leaves` parameters, one bool per buffer, from the leaves it holds.

    Args:
      params: the parameters (a pytree, or `adamx.group_leaves` parameters).
      exclude_from_weight_decay: what weight decay skips, as `adamx.adam` takes it: name
        patterns, a boolean pytree (True = excluded), a callable of the parameters, or None.

    Returns:
      A pytree of Python bools shaped like `params` (True = decayed).
    """
    if isinstance(params, GroupedParams):
        leaf_mask = leaf_decay_mask(params.leaf_specs(), exclude_from_weight_decay)
        return group_flags(params, leaf_mask)
    return leaf_decay_mask(params, exclude_from_weight_decay)


def decayed_paths(params: Any, exclude_from_weight_decay: Exclusion = None) -> list[str]:
    """The `/`-joined key paths of the leaves that weight decay applies to.

    Use it to check exclusion patterns before training.

    Args:
      params: the parameters (a pytree).
      exclude_from_weight_decay: what weight decay skips, as `adamx.adam` takes it: name
        patterns, a boolean pytree (True = excluded), a callable of the parameters, or None.

    Returns:
      A list of `/`-joined key paths, in tree order.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> adamx.decayed_paths(params, ["bias"])
      ['dense/kernel']
    """
    mask = decay_mask(params, exclude_from_weight_decay)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return [path_str(parameter_path(path)) for path, decayed in flat if decayed]


def decoupled_weight_decay(
    weight_decay: float,
    *,
    learning_rate: LearningRate = 1.0,
    exclude_from_weight_decay: Exclusion = None,
) -> optax.GradientTransformationExtraArgs:
    """Decays the parameters before applying the incoming update, as Keras orders it.

    Keras's `weight_decay`: with `lr` the learning rate of this update and `u` the incoming
    update (already scaled, with its sign, so that `p + u` is the undecayed step)::

        p_new = (p - (p * weight_decay) * lr) + u        emitted as  p_new - p

    Keras performs two in-place subtractions, decay first; emitting `p_new - p` reproduces
    `p_new` exactly through `optax.apply_updates` whenever the step is small relative to `p`,
    whereas folding the decay into the update (`u - wd * lr * p`, as `optax.add_decayed_weights`
    followed by scaling does) changes the last bit of about a quarter of the elements. Place it
    last, after the update has its learning rate and sign, as `adamx.adam` does.

    Leaves are excluded by `exclude_from_weight_decay`: regular expressions `re.search`ed in the
    leaf's key path joined with `/` and in its last key (`"bias"` matches `dense/bias`, and
    `"encoder/.*/scale"` works; Keras searches only the short variable name, the last key, so
    Keras patterns such as `"^k"` keep working), a boolean pytree (True = excluded) or a
    callable of the parameters returning one. `adamx.decayed_paths` lists what is decayed.

    Args:
      weight_decay: the decay rate, >= 0 (Keras's `weight_decay`).
      learning_rate: a number, a schedule `count -> rate` or a zero-argument callable: the rate
        that multiplies the decay (`adamx.adam` passes its own). Default 1.
      exclude_from_weight_decay: the leaves not decayed: name patterns, a boolean pytree
        (True = excluded), a callable of the parameters, or None (decay every leaf).

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = adamx.decoupled_weight_decay(0.1, learning_rate=0.5)
      >>> params = jnp.array([2.0])
      >>> updates, _ = tx.update(jnp.array([-1.0]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # (2 - 2 * 0.1 * 0.5) - 1
      Array([0.9], dtype=float32)
    """
    check_real("weight_decay", weight_decay, low=0.0)
    check_exclusion(exclude_from_weight_decay)
    schedule = learning_rate_schedule(learning_rate)

    def init_fn(params: optax.Params) -> DecoupledWeightDecayState:
        # Fail early on a mismatched mask; `optax.tree_map_params` inits with a leafless
        # placeholder, which no mask matches.
        if jax.tree.leaves(params):
            decay_mask(params, exclude_from_weight_decay)
        return DecoupledWeightDecayState(lr_step=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates,
        state: DecoupledWeightDecayState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, DecoupledWeightDecayState]:
        del extra_args
        commit = check_commit(commit)
        if params is None:
            raise ValueError(
                "decoupled_weight_decay needs `params`: call update(grads, state, params)."
            )
        updates, params = as_arrays(updates), as_arrays(params)
        learning_rate = jnp.asarray(schedule(state.lr_step))

        def decay_one(u: jax.Array, p: jax.Array, decayed: bool) -> jax.Array:
            if not decayed:
                return u
            dtype = compute_dtype(p.dtype)
            x = p.astype(dtype)
            wd, lr = jnp.asarray(weight_decay, dtype), learning_rate.astype(dtype)
            p_new = (x - x * wd * lr) + u.astype(dtype)
            if jnp.finfo(u.dtype).bits > jnp.finfo(p.dtype).bits:  # the final rounding is later
                return (p_new - x).astype(u.dtype)
            return p_new.astype(p.dtype) - p

        mask = decay_mask(params, exclude_from_weight_decay)
        new_updates = jax.tree.map(decay_one, updates, params, mask)
        lr_step = optax.safe_increment(state.lr_step)
        return new_updates, DecoupledWeightDecayState(commit_state(commit, lr_step, state.lr_step))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
