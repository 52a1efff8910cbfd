"""Shardings for an optimizer state, derived from the parameters' shardings."""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

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


def state_shardings(tx: optax.GradientTransformation, params: optax.Params) -> Any:
    """The sharding of every leaf of `tx.init(params)`, without running it.

    A state leaf in a copy of the parameter tree (Adam's moments, v-hat, the EMA average, the
    gradient accumulator; found as `optax.tree_map_params` finds them) gets its parameter's
    sharding; every other leaf (counters, the learning rate, the loss scale) is replicated on
    the parameters' mesh. Use it where sharding cannot follow from the data:
    `jax.jit(tx.init, out_shardings=state_shardings(tx, params))` on meshes with
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

    Args:
      tx: the optimizer (any optax transformation `optax.tree_map_params` handles).
      params: the parameters, placed arrays or `jax.ShapeDtypeStruct`s with a `sharding`.

    Returns:
      A pytree of shardings shaped like `tx.init(params)`.
    """
    param_shardings = _param_shardings(params)
    sharding_leaves = jax.tree.leaves(param_shardings)
    if not sharding_leaves:
        raise ValueError("state_shardings needs at least one parameter.")
    replicated = _replicated_like(sharding_leaves[0])
    return optax.tree_map_params(
        tx,
        lambda leaf, param, sharding: sharding if leaf.shape == param.shape else replicated,
        jax.eval_shape(tx.init, params),
        params,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
