"""Small pytree helpers: readable key paths, structure checks, multi-output maps, dtypes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp


def _key_name(key: Any) -> str:
    # DictKey.key, GetAttrKey.name, SequenceKey.idx, FlattenedIndexKey.key
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_str(path: tuple[Any, ...]) -> str:
    """`(DictKey('dense'), DictKey('bias'))` -> `'dense/bias'`."""
    return "/".join(_key_name(key) for key in path)


def parameter_path(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """A leaf's key path without a trailing `.value` attribute: the payload of a variable
    wrapper such as Flax NNX's `nnx.Param`, so `bias/value` is named like the parameter `bias`."""
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
        return path[:-1]
    return path


def check_same_structure(
    name: str, tree: Any, reference_name: str, reference: Any, *, none_is_leaf: bool = False
) -> None:
    """Raises a ValueError naming both trees if their structures differ (at trace time).

    With `none_is_leaf`, a None in `tree` stands for a leaf (a missing gradient)."""
    structure: Any = jax.tree.structure(
        tree, is_leaf=(lambda x: x is None) if none_is_leaf else None
    )
    reference_structure: Any = jax.tree.structure(reference)
    if structure != reference_structure:
        raise ValueError(
            f"The structure of `{name}` does not match the structure of `{reference_name}`.\n"
            f"  {name}: {structure}\n  {reference_name}: {reference_structure}"
        )


def check_same_shapes(updates: Any, params: Any) -> None:
    """Raises a ValueError naming the first gradient leaf (None leaves skipped) whose shape is
    not its parameter's: JAX would broadcast it silently, or fail with no leaf path."""
    flat = jax.tree_util.tree_flatten_with_path(updates, is_leaf=lambda x: x is None)[0]
    for (path, g), p in zip(flat, jax.tree.leaves(params), strict=True):
        if g is not None and jnp.shape(g) != jnp.shape(p):
            raise ValueError(
                f"The gradient at '{path_str(path)}' has shape {jnp.shape(g)}, its parameter "
                f"{jnp.shape(p)}; they must be equal."
            )


def check_floating(tree: Any, what: str = "parameters") -> None:
    """adamx takes floating-point (or complex) parameters only; an integer or boolean leaf
    gets a clear TypeError (at trace time) rather than a silent conversion."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"adamx takes floating-point {what}; the leaf at '{path_str(path)}' has "
                f"dtype {jnp.result_type(leaf)}. Cast it to a float dtype or keep it out of the "
                "optimized tree."
            )


def as_arrays(tree: Any) -> Any:
    """Python and NumPy scalars and arrays as JAX arrays (JAX arrays and tracers unchanged)."""
    return jax.tree.map(jnp.asarray, tree)


def real_dtype(dtype: Any) -> Any:
    """float32 for complex64, float64 for complex128; any other dtype itself."""
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def zeros_in(params: Any, dtype: Any = None, *, real: bool = False) -> Any:
    """Zeros shaped like each parameter leaf, stored in `dtype` (None: the parameter's own).

    A complex parameter's leaf is complex in `dtype`'s precision, or, with `real`, real in the
    parameter's precision when `dtype` is None (a second moment of `|g|**2`)."""

    def zeros(p: Any) -> jax.Array:
        own = jnp.result_type(p)
        if dtype is None:
            return jnp.zeros_like(p, real_dtype(own) if real else own)
        complex_ = jnp.issubdtype(own, jnp.complexfloating) and not real
        return jnp.zeros_like(p, jnp.result_type(dtype, jnp.complex64) if complex_ else dtype)

    return jax.tree.map(zeros, params)


def abs_square(x: jax.Array) -> jax.Array:
    """`|x|**2`: `x**2` for real `x`, as Keras squares; `(conj(x) * x).real` for complex `x`,
    as optax's `abs_sq`."""
    return jnp.real(jnp.conj(x) * x) if jnp.iscomplexobj(x) else jnp.square(x)


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype hyper-parameter arithmetic runs in: float32 at least, wider if a leaf is.

    float32 and float64 leaves compute in their own dtype, exactly as Keras does; float16 and
    bfloat16 leaves compute in float32 and store the result in their dtype (Keras computes in
    the low precision, where bfloat16 rounds `beta_2 = 0.999` to 1 and parameters never move).
    """
    return jnp.result_type(jnp.float32, *dtypes)


def leaf_indices(tree: Any) -> Any:
    """`tree` with each leaf replaced by its position in `jax.tree.leaves(tree)`."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, range(len(leaves)))


def tree_map_multi(
    fn: Callable[..., tuple[Any, ...]], n_outputs: int, tree: Any, *rest: Any
) -> tuple[Any, ...]:
    """Like `jax.tree.map`, for an `fn` returning `n_outputs` values: returns that many trees."""
    leaves, treedef = jax.tree.flatten(tree)
    treedef = cast(Any, treedef)
    rest_leaves = [treedef.flatten_up_to(other) for other in rest]
    outputs = [fn(*args) for args in zip(leaves, *rest_leaves, strict=True)]
    columns = list(zip(*outputs, strict=True)) or [()] * n_outputs
    return tuple(treedef.unflatten(column) for column in columns)
