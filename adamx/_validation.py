"""Construction-time argument checks shared by every factory.

Each check names the argument, the value received and the accepted range. Values that are
JAX tracers (for example hyper-parameters injected by `optax.inject_hyperparams` inside `jit`)
cannot be inspected and are accepted as they are; concrete arrays are checked like numbers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _as_real(name: str, value: Any, accepted: str) -> float | None:
    """Returns `value` as a Python float, or None for a tracer; raises TypeError otherwise."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be {accepted}, not a boolean. Received: {name}={value!r}")
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray | jax.Array) and value.shape == ():
        # jnp's issubdtype knows bfloat16 is floating; NumPy's does not.
        if not jnp.issubdtype(value.dtype, jnp.floating) and not jnp.issubdtype(
            value.dtype, jnp.integer
        ):
            raise TypeError(
                f"`{name}` must be {accepted}; received an array of dtype {value.dtype}."
            )
        return float(value)
    raise TypeError(f"`{name}` must be {accepted}. Received: {name}={value!r}")


def check_real(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Checks that `value` is a finite real number in the given interval."""
    left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
    accepted = f"a finite real number in {left}{low:g}, {high:g}{right}"
    number = _as_real(name, value, accepted)
    if number is None:
        return
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if not math.isfinite(number) or too_low or too_high:
        hint = ""
        if getattr(value, "dtype", None) in (jnp.bfloat16, jnp.float16):
            hint = (
                f" (the value rounded to {value.dtype}; `optax.inject_hyperparams` casts "
                "hyper-parameters to the parameters' dtype unless given "
                "`hyperparam_dtype=jnp.float32`)"
            )
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}{hint}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")


def check_int(name: str, value: Any, *, low: int) -> None:
    """Checks that `value` is an integer (not a bool) >= `low`."""
    if isinstance(value, jax.Array | np.ndarray):
        raise TypeError(
            f"`{name}` must be a Python integer >= {low}, not an array: it fixes the structure "
            "of the computation. With `optax.inject_hyperparams`, list it in `static_args`. "
            f"Received: {name}={value!r}"
        )
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer >= {low}. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    if value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")


def check_transformation(name: str, value: Any) -> None:
    """Checks that `value` is an optax transformation (an object with `init` and `update`)."""
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(
            f"`{name}` must be an optax GradientTransformation (with `init` and `update`), for "
            f"example `adamx.adam()`. Received: {name}={value!r}"
        )


def check_dtype(name: str, dtype: Any) -> None:
    """Checks that `dtype` is None or a real floating dtype (the storage dtype of a state leaf;
    complex parameters get the complex dtype of that precision)."""
    if dtype is None:
        return
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(
            f"`{name}` must be a real floating dtype (for example jnp.bfloat16) or None. "
            f"Received: {name}={dtype!r}"
        )


def check_storage(name: str, value: Any) -> bool:
    """Checks a moment's storage: None, a real floating dtype, or the string "8bit" (8-bit
    blockwise codes, `adamx._blockwise`); returns whether it is "8bit"."""
    if isinstance(value, str) and value.lower().replace("-", "") == "8bit":
        if value != "8bit":
            raise ValueError(f'`{name}` must be "8bit" for 8-bit moments. Received: {value!r}')
        return True
    try:
        check_dtype(name, value)
    except TypeError:
        raise TypeError(
            f'`{name}` must be None, a real floating dtype (for example jnp.bfloat16) or "8bit" '
            f"(8-bit blockwise moments). Received: {name}={value!r}"
        ) from None
    return False


def check_seed(name: str, value: Any) -> None:
    """None, or a Python integer in [0, 2**32) (a uint32 seed kept in the state)."""
    if value is None:
        return
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be None or an integer in [0, 2**32) (with "
            f"`optax.inject_hyperparams`, list it in `static_args`). Received: {value!r}"
        )
    if not 0 <= int(value) < 2**32:
        raise ValueError(f"`{name}` must be None or an integer in [0, 2**32). Received: {value!r}")
