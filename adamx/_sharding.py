"""Shardings for an optimizer state: like the parameters, or also split over a data axis."""

from __future__ import annotations

import math
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from adamx._blockwise import full_spec, scales_shape, scales_sharding
from adamx._trees import path_str

# Leaves smaller than this (elements) stay whole under `shard_over`: 64 KiB of float32, where a
# collective's fixed cost outweighs the bytes it saves.
MIN_SHARD_SIZE = 2**14


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


def _is_scales(leaf_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a state leaf of `leaf_shape` holds the per-block scales of a parameter."""
    return bool(shape) and leaf_shape != shape and leaf_shape == scales_shape(shape)


def _like_param(leaf: Any, param: Any, sharding: Sharding, replicated: Sharding) -> Sharding:
    """A parameter's sharding for a state leaf of its shape or for its 8-bit moment's scales;
    `replicated` for any other leaf."""
    if leaf.shape == param.shape:
        return sharding
    if _is_scales(leaf.shape, param.shape):
        return scales_sharding(sharding, param.shape)
    return replicated


def _split_over(axis: str, min_size: int, sharding: Sharding, leaf: Any) -> Sharding:
    """`sharding` with `axis` added on the first unsharded dimension that the axis divides;
    unchanged for a leaf under `min_size` elements, already split over `axis`, or with no such
    dimension."""
    if not isinstance(sharding, NamedSharding) or math.prod(leaf.shape) < min_size:
        return sharding
    spec = full_spec(sharding, leaf.ndim)
    if any(axis in (e if isinstance(e, tuple) else (e,)) for e in spec):
        return sharding
    size = sharding.mesh.shape[axis]
    for dim, (entry, n) in enumerate(zip(spec, leaf.shape, strict=True)):
        if entry is None and n % size == 0:
            return NamedSharding(sharding.mesh, PartitionSpec(*spec[:dim], axis, *spec[dim + 1 :]))
    return sharding


def state_shardings(
    tx: optax.GradientTransformation,
    params: optax.Params,
    *,
    shard_over: str | None = None,
    min_shard_size: int = MIN_SHARD_SIZE,
) -> Any:
    """The sharding of every leaf of `tx.init(params)`, without running it.

    By default the state follows the parameters: a state leaf in a copy of the parameter tree
    (Adam's moments, v-hat, the EMA average, the gradient accumulator, a lower-precision or
    quantised copy; found as `optax.tree_map_params` finds them) gets its parameter's sharding;
    the per-block scales of 8-bit moments too, with their last axis replicated where the
    parameter's shards would split a block; every other leaf (counters, the learning rate,
    the loss scale) is replicated on the parameters' mesh.

    With `shard_over="data"` the state is also split over that mesh axis while the parameters
    stay as they are: ZeRO stage 1, for data parallelism with replicated parameters. Each leaf
    of at least `min_shard_size` elements is split along its first dimension that is not
    sharded yet and that the axis size divides; smaller leaves, leaves with no such dimension,
    and counters stay replicated over the axis (`sharding_report` lists them). Under `jax.jit`
    the step then reduces the gradients, updates each device's shard, and gathers the new
    parameters, with the same arithmetic as on one device.

    Use it for `jax.jit(tx.init, out_shardings=state_shardings(tx, params))`, for the state's
    `out_shardings` of a train step, and as the target when restoring a checkpoint::

        target = jax.tree.map(
            lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype,
                                                         sharding=sharding),
            jax.eval_shape(tx.init, params), adamx.state_shardings(tx, params))

    Works for any optax transformation that `optax.tree_map_params` works for (optax's own and
    adamx's do). Without `shard_over`, eager `tx.init(params)` and `jax.jit(tx.init)` on
    `AxisType.Explicit` meshes already shard the state this way; on `AxisType.Auto` meshes
    `jax.jit(tx.init)` replicates, as it does for any optax optimizer.

    Args:
      tx: the optimizer (any optax transformation `optax.tree_map_params` handles).
      params: the parameters, as jax.Arrays or `jax.ShapeDtypeStruct` values with a sharding.
      shard_over: a mesh axis name of the parameters' mesh to split the state over, or None.
      min_shard_size: the fewest elements a leaf must have to be split over `shard_over`.

    Returns:
      A pytree of shardings shaped like `tx.init(params)`.
    """
    param_shardings = _param_shardings(params)
    sharding_leaves = jax.tree.leaves(param_shardings)
    if not sharding_leaves:
        raise ValueError("state_shardings needs at least one parameter.")
    replicated = _replicated_like(sharding_leaves[0])
    shapes = jax.eval_shape(tx.init, params)
    shardings = optax.tree_map_params(
        tx,
        lambda leaf, param, sharding: _like_param(leaf, param, sharding, replicated),
        shapes,
        params,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    if shard_over is None:
        return shardings
    _check_axis(shard_over, replicated, min_shard_size)
    return jax.tree.map(
        lambda sharding, leaf: _split_over(shard_over, min_shard_size, sharding, leaf),
        shardings,
        shapes,
    )


def _check_axis(axis: Any, replicated: Sharding, min_size: Any) -> None:
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_shard_size must be an integer >= 1; got {min_size!r}.")
    mesh = getattr(replicated, "mesh", None)
    if mesh is None or axis not in mesh.axis_names:
        names = tuple(mesh.axis_names) if mesh is not None else ()
        raise ValueError(
            f"shard_over must name an axis of the parameters' mesh {names}; got {axis!r}. "
            f"Place the parameters with a NamedSharding on a mesh with that axis."
        )


def sharding_report(tree: Any) -> str:
    """A table of a placed tree: each leaf's shape, dtype, partition spec and bytes per device.

    `tree` holds jax.Arrays or `jax.ShapeDtypeStruct` values with a sharding (for example
    `jax.eval_shape(tx.init, params)` with `state_shardings`' shardings attached). The last
    line gives the largest per-device total and lists the leaves that are whole on every
    device. Bytes per device are the shard's: `sharding.shard_shape(shape)`.

    Args:
      tree: the arrays or shapes to describe.
    """
    rows, total, whole = [], 0, []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        sharding = leaf.sharding
        nbytes = math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        total += nbytes
        spec = getattr(sharding, "spec", "single device")
        if leaf.ndim and sharding.is_fully_replicated:
            whole.append(path_str(path))
        rows.append(
            f"{path_str(path):48s} {leaf.shape!s:16s} {leaf.dtype!s:9s} {spec!s:24s} {nbytes}"
        )
    header = f"{'leaf':48s} {'shape':16s} {'dtype':9s} {'spec':24s} bytes/device"
    footer = f"total: {total} bytes per device; whole on every device: {', '.join(whole) or 'none'}"
    return "\n".join([header, *rows, footer])
