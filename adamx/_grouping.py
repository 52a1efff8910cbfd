"""Opt-in grouped parameters: many small tensors kept as a few flat buffers, one per dtype."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx._exclusion import Exclusion, leaf_decay_mask
from adamx._trees import check_floating, parameter_path, path_str


class _Slot(NamedTuple):
    group: int  # index of the buffer holding the leaf
    offset: int  # where the leaf starts in it
    shape: tuple[int, ...]


class GroupLayout(NamedTuple):
    """Where each leaf of the original tree lives; static (hashable), so it jits."""

    treedef: Any
    paths: tuple[str, ...]  # each leaf's `/`-joined key path
    groups: tuple[str, ...]  # buffer names: the dtype, with "_no_decay" for excluded leaves
    dtypes: tuple[str, ...]  # one per buffer
    slots: tuple[_Slot, ...]  # one per leaf


@jax.tree_util.register_pytree_with_keys_class
class GroupedParams:
    """A parameter tree stored as a few flat buffers; a pytree whose leaves are the buffers.

    Made by `adamx.group_leaves`; `.ungroup()` (or `adamx.ungroup`) gives the original tree
    back, as slices of the buffers. Its leaves are keyed by group name (`float32`,
    `float32_no_decay`, ...), so states, gradients and checkpoints of it are grouped too.
    """

    def __init__(self, buffers: Iterable[Any], layout: GroupLayout) -> None:
        self.buffers = tuple(buffers)
        self.layout = layout

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], GroupLayout]:
        keys = (jax.tree_util.DictKey(name) for name in self.layout.groups)
        return list(zip(keys, self.buffers, strict=True)), self.layout

    def tree_flatten(self) -> tuple[tuple[Any, ...], GroupLayout]:
        return self.buffers, self.layout

    @classmethod
    def tree_unflatten(cls, layout: GroupLayout, buffers: Iterable[Any]) -> GroupedParams:
        return cls(buffers, layout)

    def ungroup(self) -> Any:
        """The original tree: each leaf a (static) slice of its buffer, reshaped."""
        leaves = [
            self.buffers[slot.group][slot.offset : slot.offset + _size(slot.shape)].reshape(
                slot.shape
            )
            for slot in self.layout.slots
        ]
        return jax.tree.unflatten(self.layout.treedef, leaves)

    def leaf_specs(self) -> Any:
        """The original tree with a `jax.ShapeDtypeStruct` per leaf (no data)."""
        specs = [
            jax.ShapeDtypeStruct(slot.shape, self.layout.dtypes[slot.group])
            for slot in self.layout.slots
        ]
        return jax.tree.unflatten(self.layout.treedef, specs)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{name}: {getattr(buffer, 'shape', buffer)}"
            for name, buffer in zip(self.layout.groups, self.buffers, strict=True)
        )
        return f"GroupedParams({len(self.layout.slots)} leaves in {{{sizes}}})"


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _check_not_sharded(path: str, leaf: Any) -> None:
    sharding = getattr(leaf, "sharding", None)
    if isinstance(leaf, jax.core.Tracer) or sharding is None:
        return
    if len(sharding.device_set) > 1 and not sharding.is_fully_replicated:
        raise ValueError(
            f"group_leaves keeps leaves in single flat buffers, which would re-lay-out the "
            f"sharded parameter '{path}' ({sharding}). Keep sharded parameters per leaf (the "
            "default); group only replicated or single-device parameters."
        )


def group_leaves(params: Any, exclude_from_weight_decay: Exclusion = None) -> GroupedParams:
    """Packs a parameter tree into one flat buffer per dtype: the fast path for many small
    tensors.

    On XLA:CPU every parameter tensor costs the optimizer step a few kernels, so a model made of
    thousands of small tensors spends its step launching kernels. Keep the parameters grouped
    instead, and differentiate through `.ungroup()`::

        grouped = adamx.group_leaves(params, exclude_from_weight_decay=["bias"])
        tx = adamx.adam(weight_decay=0.004, exclude_from_weight_decay=["bias"])
        state = tx.init(grouped)

        def loss_fn(grouped, batch):
            return loss(grouped.ungroup(), batch)  # slices: XLA fuses them into their users

        grads = jax.grad(loss_fn)(grouped, batch)  # grouped too
        updates, state = tx.update(grads, state, grouped)
        grouped = optax.apply_updates(grouped, updates)

    Every element gets exactly the arithmetic it gets per leaf, so the numbers are the per-leaf
    numbers, with two exceptions: `global_clipnorm` sums the squares per buffer instead of per
    tensor (another summation order: the norm can differ in its last bits), and `clipnorm`, a
    per-tensor norm, is refused. Leaves excluded from weight decay get buffers of their own
    (`float32_no_decay`); pass the same `exclude_from_weight_decay` here and to the optimizer,
    which checks that each buffer is decayed all or nothing.

    Sharded parameters are refused (a flat buffer would re-lay them out); call it on concrete,
    placed arrays. Grouping copies the parameters once; `ungroup()` returns views.

    Args:
      params: the parameter tree, concrete arrays (not sharded).
      exclude_from_weight_decay: the same value the optimizer gets, so that excluded leaves
        get buffers of their own; None if weight decay applies to every leaf (or is off).

    Returns:
      An `adamx.GroupedParams`, a pytree of one flat buffer per dtype (and decay group).
    """
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not leaves_with_paths:
        raise ValueError("group_leaves needs at least one parameter; the tree has no leaves.")
    check_floating(params)
    paths = tuple(path_str(parameter_path(path)) for path, _ in leaves_with_paths)
    for path, (_, leaf) in zip(paths, leaves_with_paths, strict=True):
        _check_not_sharded(path, leaf)
    decayed = jax.tree.leaves(leaf_decay_mask(params, exclude_from_weight_decay))

    groups: dict[tuple[str, bool], list[int]] = {}
    for index, ((_, leaf), decay) in enumerate(zip(leaves_with_paths, decayed, strict=True)):
        groups.setdefault((jnp.result_type(leaf).name, decay), []).append(index)
    names, dtypes, buffers, slots = [], [], [], {}
    for group, ((dtype, decay), members) in enumerate(groups.items()):
        names.append(dtype if decay else f"{dtype}_no_decay")
        dtypes.append(dtype)
        leaves = [jnp.asarray(leaves_with_paths[index][1], dtype) for index in members]
        offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
        for index, offset, leaf in zip(members, offsets[:-1], leaves, strict=True):
            slots[index] = _Slot(group, int(offset), tuple(leaf.shape))
        buffers.append(jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]))
    ordered_slots = tuple(slots[index] for index in range(len(leaves_with_paths)))
    layout = GroupLayout(treedef, paths, tuple(names), tuple(dtypes), ordered_slots)
    return GroupedParams(buffers, layout)


def ungroup(grouped: GroupedParams) -> Any:
    """The tree `group_leaves` was given, from its buffers (or from any tree shaped like them:
    an EMA average, an update).

    Args:
      grouped: `adamx.group_leaves` parameters, or a tree shaped like their buffers.

    Returns:
      The original parameter tree.
    """
    if not isinstance(grouped, GroupedParams):
        raise TypeError(f"ungroup takes GroupedParams; received {type(grouped).__name__}.")
    return grouped.ungroup()


def group_flags(grouped: GroupedParams, leaf_flags: Any) -> GroupedParams:
    """Per-leaf weight-decay flags (a tree like the original) -> one flag per buffer; a buffer
    whose leaves disagree is an error."""
    members: list[list[tuple[str, bool]]] = [[] for _ in grouped.layout.groups]
    layout = grouped.layout
    for path, slot, flag in zip(
        layout.paths, layout.slots, jax.tree.leaves(leaf_flags), strict=True
    ):
        members[slot.group].append((path, flag))
    for name, group in zip(layout.groups, members, strict=True):
        if len({flag for _, flag in group}) > 1:
            listed = ", ".join(f"{path}={flag}" for path, flag in group[:6])
            raise ValueError(
                f"The grouped buffer '{name}' mixes leaves that `exclude_from_weight_decay` "
                f"treats differently ({listed}, ...). Group with the same exclusion: "
                "`adamx.group_leaves(params, exclude_from_weight_decay=...)`."
            )
    return GroupedParams([group[0][1] for group in members], layout)
