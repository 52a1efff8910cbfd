"""Which parameters weight decay skips: Keras's name patterns, a boolean pytree or a callable."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import numpy as np

from adamx._trees import check_same_structure, parameter_path, path_str

Exclusion: TypeAlias = str | Sequence[str] | Any | Callable[[Any], Any] | None
"""Regular-expression patterns, each `re.search`ed in a leaf's `/`-joined key path and in its
last key (Keras's short variable name); or a pytree of
bools (True = excluded) shaped like the parameters or a prefix of them; or a callable of the
parameters returning such a tree; or None (decay every leaf)."""


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
    """Fails at construction on a bad regular expression, or on a value that is none of the
    accepted forms (for a boolean pytree, its leaves are checked; its structure is checked
    against the parameters at `init`)."""
    if exclude is None or callable(exclude) or _patterns(exclude) is not None:
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(exclude)[0]:
        if not (isinstance(leaf, bool | np.bool_) or getattr(leaf, "dtype", None) == np.bool_):
            raise TypeError(
                "`exclude_from_weight_decay` must be None, a regular expression or a list of "
                "them, a pytree of booleans (True = excluded) or a callable of the parameters "
                f"returning one. Received: {exclude!r}"
                + (f" (its leaf '{path_str(path)}' is {leaf!r})" if path else "")
            )


def _as_bool(value: Any, path: str) -> bool:
    try:
        return bool(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            "`exclude_from_weight_decay` masks must hold Python or NumPy booleans, known before "
            f"tracing; the entry for '{path}' is {value!r}."
        ) from None


def leaf_decay_mask(params: Any, exclude_from_weight_decay: Exclusion = None) -> Any:
    """A pytree of Python bools shaped like `params`: True where the leaf is decayed."""
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
