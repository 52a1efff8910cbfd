"""Shardings for an optimizer state, derived from the parameters' shardings."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from adamx._blockwise import block_size
from adamx._trees import path_str


def _replicated_like(sharding: Sharding) -> Sharding:
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    raise TypeError(
        f"state_shardings supports parameters with a NamedSharding or a single-device sharding; "
        f"got {type(sharding).__name__}. Place the parameters with `NamedSharding(mesh, spec)`."
    )


def _param_shardings(params: optax.Params) -> Any:
    def sharding_of(path: tuple[Any, ...], leaf: Any) -> Sharding:
        sharding = getattr(leaf, "sharding", None)
        if not isinstance(sharding, Sharding):
            raise TypeError(
                f"state_shardings needs `params` as jax.Arrays or jax.ShapeDtypeStructs with a "
                f"sharding; the leaf at '{path_str(path)}' has none ({type(leaf).__name__})."
            )
        return sharding

    return jax.tree_util.tree_map_with_path(sharding_of, params)


def _scales_sharding(sharding: Sharding, shape: tuple[int, ...]) -> Sharding:
    """The sharding of an 8-bit moment's per-block scales (`adamx._blockwise`), for a
    parameter of `shape` and `sharding`: the parameter's, with the last axis replicated where
    its shards would split a block."""
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    last = spec[-1]
    axes = () if last is None else (last,) if isinstance(last, str) else tuple(last)
    shards = int(np.prod([sharding.mesh.shape[axis] for axis in axes], dtype=np.int64))
    if shape[-1] % (shards * block_size(shape[-1])):
        spec[-1] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def _is_scales(leaf_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a state leaf of `leaf_shape` holds the per-block scales of a parameter."""
    if not shape or leaf_shape == shape:
        return False
    return leaf_shape == (*shape[:-1], -(-shape[-1] // block_size(shape[-1])))


def state_shardings(tx: optax.GradientTransformation, params: optax.Params) -> Any:
    """The sharding of every leaf of `tx.init(params)`, without running it.

    A state leaf in a copy of the parameter tree (Adam's moments, v-hat, the EMA average, the
    gradient accumulator; found as `optax.tree_map_params` finds them) gets its parameter's
    sharding; the per-block scales of 8-bit moments too, with their last axis replicated where
    the parameter's shards would split a block; every other leaf (counters, the learning rate,
    the loss scale) is replicated on the parameters' mesh. Use it where sharding cannot follow
    from the data: `jax.jit(tx.init, out_shardings=state_shardings(tx, params))` on meshes with
    `AxisType.Auto` axes (there `jax.jit(tx.init)` replicates, as it does for any optax
    optimizer), and as the target when restoring a checkpoint onto a mesh::

        target = jax.tree.map(
            lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype,
                                                         sharding=sharding),
            jax.eval_shape(tx.init, params), adamx.state_shardings(tx, params))

    Works for any optax transformation that `optax.tree_map_params` works for (optax's own and
    adamx's do). `params` may be arrays or `jax.ShapeDtypeStruct`s with a `sharding`; eager
    `tx.init(params)`, and `jax.jit(tx.init)` on `AxisType.Explicit` meshes, already shard the
    state this way.
    """
    param_shardings = _param_shardings(params)
    sharding_leaves = jax.tree.leaves(param_shardings)
    if not sharding_leaves:
        raise ValueError("state_shardings needs at least one parameter.")
    replicated = _replicated_like(sharding_leaves[0])

    def like_param(leaf: Any, param: Any, sharding: Sharding) -> Sharding:
        if leaf.shape == param.shape:
            return sharding
        if _is_scales(leaf.shape, param.shape):
            return _scales_sharding(sharding, param.shape)
        return replicated

    return optax.tree_map_params(
        tx,
        like_param,
        jax.eval_shape(tx.init, params),
        params,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
