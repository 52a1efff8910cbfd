"""Keras's decoupled weight decay, applied before the step, with exclusion by name pattern."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import optax

from adamx._commit import commit_state
from adamx._hyperparams import LearningRate, learning_rate_schedule
from adamx._trees import check_same_structure, compute_dtype, parameter_path, path_str
from adamx._validation import check_real

Exclusion: TypeAlias = str | Sequence[str] | Any | Callable[[Any], Any] | None
"""Regular-expression patterns, each `re.search`ed in a leaf's `/`-joined key path and in its
last key (Keras's short variable name); or a pytree of
bools (True = excluded) shaped like the parameters or a prefix of them; or a callable of the
parameters returning such a tree; or None (decay every leaf)."""


class DecoupledWeightDecayState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # int32[]: updates applied so far, where the learning-rate schedule is read


def _patterns(exclude: Exclusion) -> list[re.Pattern[str]] | None:
    """Compiled patterns if `exclude` is a pattern list (or one pattern), else None."""
    if isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(exclude, list | tuple) or not exclude:
        return None
    if not all(isinstance(pattern, str) for pattern in exclude):
        return None
    compiled = []
    for pattern in exclude:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(
                f"`exclude_from_weight_decay` holds an invalid regular expression {pattern!r}: "
                f"{error}"
            ) from None
    return compiled


def check_exclusion(exclude: Exclusion) -> None:
    """Compiles patterns eagerly, so a bad regular expression fails at construction."""
    _patterns(exclude)


def _as_bool(value: Any, path: str) -> bool:
    try:
        return bool(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            "`exclude_from_weight_decay` masks must hold Python or NumPy booleans, known before "
            f"tracing; the entry for '{path}' is {value!r}."
        ) from None


def decay_mask(params: Any, exclude_from_weight_decay: Exclusion = None) -> Any:
    """A pytree of Python bools shaped like `params`: True where the leaf is decayed.

    For `adamx.group_leaves` parameters, one bool per buffer, from the leaves it holds."""
    from adamx._grouping import GroupedParams, group_flags  # grouping itself uses decay_mask

    if isinstance(params, GroupedParams):
        leaf_mask = decay_mask(params.leaf_specs(), exclude_from_weight_decay)
        return group_flags(params, leaf_mask)
    exclude = exclude_from_weight_decay
    patterns = _patterns(exclude)
    if exclude is None or patterns is not None:
        patterns = patterns or []

        def decayed(path: tuple[Any, ...], _: Any) -> bool:
            # The full path allows "encoder/.*/scale"; the last key alone is Keras's short
            # variable name, so anchored Keras patterns such as "^k" keep working.
            path = parameter_path(path)
            names = (path_str(path), path_str(path[-1:]))
            return not any(p.search(name) for p in patterns for name in names)

        return jax.tree_util.tree_map_with_path(decayed, params)
    excluded = exclude(params) if callable(exclude) else exclude
    try:
        broadcast = jax.tree.map(
            lambda flag, subtree: jax.tree.map(lambda _: flag, subtree), excluded, params
        )
    except ValueError:
        check_same_structure("exclude_from_weight_decay", excluded, "params", params)
        raise
    return jax.tree_util.tree_map_with_path(
        lambda path, flag: not _as_bool(flag, path_str(path)), broadcast
    )


def decayed_paths(params: Any, exclude_from_weight_decay: Exclusion = None) -> list[str]:
    """The `/`-joined key paths of the leaves that weight decay applies to.

    Use it to check exclusion patterns before training:

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
        decay_mask(params, exclude_from_weight_decay)  # fail early on a mismatched mask
        return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates,
        state: DecoupledWeightDecayState,
        params: optax.Params | None = None,
        *,
        commit: jax.Array | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, DecoupledWeightDecayState]:
        del extra_args
        if params is None:
            raise ValueError(
                "decoupled_weight_decay needs `params`: call update(grads, state, params)."
            )
        check_same_structure("updates", updates, "params", params)
        learning_rate = jnp.asarray(schedule(state.count))

        def decay_one(u: jax.Array, p: jax.Array, decayed: bool) -> jax.Array:
            if not decayed:
                return u
            dtype = compute_dtype(p.dtype)
            x = p.astype(dtype)
            wd, lr = jnp.asarray(weight_decay, dtype), learning_rate.astype(dtype)
            p_new = ((x - x * wd * lr) + u.astype(dtype)).astype(p.dtype)
            return p_new - p

        mask = decay_mask(params, exclude_from_weight_decay)
        new_updates = jax.tree.map(decay_one, updates, params, mask)
        count = optax.safe_increment(state.count)
        return new_updates, DecoupledWeightDecayState(commit_state(commit, count, state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
