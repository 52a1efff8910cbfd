"""Stochastic rounding: storing a wider float in a narrower one without bias.

Rounding to nearest loses every change smaller than half an ulp of the stored value, so a
bfloat16 moment or average that moves by less stalls. Stochastic rounding stores one of the two
neighbours of `x`, the farther one with probability (distance to the nearer one) / ulp, so
the stored value is `x` on average.

The random numbers are a counter-based hash (`_mix`, a bijective 32-bit integer hash) of the
seed, the step, a stream per kind of state, the leaf's index and the element's index in the
whole (logical) array: no PRNG pass over memory (XLA fuses the hash into the kernel that
stores), bit-identical across runs and after a resume, and independent of how the array is
laid out over devices.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx._commit import check_commit, commit_state
from adamx._validation import check_seed

_U32 = jnp.uint32


def _mix(x: jax.Array) -> jax.Array:
    """A bijective hash of uint32 values with good avalanche (C. Wellons's "lowbias32")."""
    x = x ^ (x >> 16)
    x = x * _U32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * _U32(0x846CA68B)
    return x ^ (x >> 16)


def rounding_key(seed: jax.Array, step: jax.Array, stream: int) -> jax.Array:
    """The uint32 key of one kind of state (`stream`) at one step."""
    stream_bits = _U32(np.uint32((stream * 0x9E3779B9) & 0xFFFFFFFF))
    return _mix(_mix(seed.astype(_U32) ^ stream_bits) + step.astype(_U32))


def random_bits(key: jax.Array, leaf: int, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits, one word per element, from the key, the leaf and the index. A
    stored bfloat16 needs 16 of them: `swap_halves` gives a second, independent draw."""
    index = jnp.zeros(shape, _U32)
    for axis in range(len(shape)):  # the element's row-major index in the whole array
        stride = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        index = index + jax.lax.broadcasted_iota(_U32, shape, axis) * _U32(stride & 0xFFFFFFFF)
    leaf_key = _mix(key + _U32((leaf * 0x85EBCA6B) & 0xFFFFFFFF))
    return _mix(index * _U32(0x9E3779B9) + leaf_key)


def swap_halves(bits: jax.Array) -> jax.Array:
    return (bits << 16) | (bits >> 16)


def round_to(x: jax.Array, dtype: Any, bits: jax.Array | None) -> jax.Array:
    """`x` stored in `dtype`: rounded to nearest where `bits` (from `random_bits`) is None or
    `dtype` is not narrower than `x`'s, else stochastically (unbiased; exact values stay
    exact). bfloat16 from float32 reads the top 16 bits, any other pair the top 24; complex
    values round to nearest."""
    dtype = jnp.dtype(dtype)
    narrower = jnp.finfo(dtype).bits < jnp.finfo(x.dtype).bits
    if bits is None or not narrower or jnp.iscomplexobj(x):
        return x.astype(dtype)
    if x.dtype == jnp.float32 and dtype == jnp.bfloat16:
        # bfloat16 is float32's top half. Adding 16 random bits to the half that is dropped
        # carries into the kept half (one ulp away from zero, as the pattern is sign and
        # magnitude) with probability equal to the dropped fraction. One chain of integer ops
        # that XLA fuses into the kernel that stores; NaNs are kept as they are.
        pattern = jax.lax.bitcast_convert_type(x, _U32) + (bits >> 16)
        truncated = jax.lax.bitcast_convert_type(pattern & _U32(0xFFFF0000), jnp.float32)
        return jnp.where(jnp.isnan(x), x, truncated).astype(dtype)
    # Any other pair: the neighbour toward zero, or the next one with the fraction's chance.
    nearest = x.astype(dtype)
    toward_zero = jnp.where(
        jnp.abs(nearest.astype(x.dtype)) > jnp.abs(x), jnp.nextafter(nearest, 0), nearest
    )
    away = jnp.nextafter(toward_zero, jnp.where(x < 0, -jnp.inf, jnp.inf).astype(dtype))
    low, high = jnp.abs(toward_zero.astype(x.dtype)), jnp.abs(away.astype(x.dtype))
    fraction = (jnp.abs(x) - low) / (high - low)  # NaN for infinities: never rounds up
    uniform = (bits >> 8).astype(jnp.float32) * np.float32(2.0**-24)
    return jnp.where(uniform < fraction, away, toward_zero)


class StochasticRoundParamsState(NamedTuple):
    """State of `stochastic_round_params`: the update count and the seed."""

    steps: jax.Array  # int32[]: updates so far, which the random bits read
    rounding_seed: jax.Array  # uint32[]


def stochastic_round_params(rounding_seed: int) -> optax.GradientTransformationExtraArgs:
    """Lands each narrow parameter on the stochastic rounding of `p + u`.

    For each leaf whose update `u` is wider than its parameter `p` (float32 updates of
    bfloat16 or float16 parameters, as `scale_by_keras_adam` gives them with a
    `rounding_seed`)::

        target = stochastic_round(p + u, p.dtype)     p + u computed in u's dtype
        emit     target - p                           in u's dtype

    The emitted update is exact, so `optax.apply_updates` (which adds in the wider dtype and
    casts back) gives `target` exactly; it stays wide for that reason. Other leaves pass
    through. Rounding to nearest loses every step under half an ulp of `p` (a bfloat16
    parameter near 1 ignores steps below 2**-9); stochastic rounding keeps them on average.
    Place it last, after the update has its learning rate, sign and weight decay, as
    `adamx.adam(rounding_seed=...)` does. Where `commit` is False the counter is kept.

    Args:
      rounding_seed: an integer in [0, 2**32), kept in the state; with the update count and
        each element's index it gives the random bits, the same on any device layout.
    """
    check_seed("rounding_seed", rounding_seed)
    seed = np.uint32(rounding_seed)

    def init_fn(params: optax.Params) -> StochasticRoundParamsState:
        del params
        return StochasticRoundParamsState(jnp.zeros([], jnp.int32), jnp.asarray(seed))

    def update_fn(
        updates: optax.Updates,
        state: StochasticRoundParamsState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, StochasticRoundParamsState]:
        del extra_args
        if params is None:
            raise ValueError(
                "stochastic_round_params needs `params`: call update(u, state, params)."
            )
        key = rounding_key(state.rounding_seed, state.steps, 5)
        leaves, structure = jax.tree.flatten(updates)
        treedef = cast(Any, structure)  # jax's stubs lack PyTreeDef's methods

        def land(u: jax.Array, p: jax.Array, leaf: int) -> jax.Array:
            if jnp.finfo(u.dtype).bits <= jnp.finfo(p.dtype).bits:
                return u
            x = p.astype(u.dtype)
            return round_to(x + u, p.dtype, random_bits(key, leaf, p.shape)).astype(u.dtype) - x

        landed = [
            land(u, p, i)
            for i, (u, p) in enumerate(zip(leaves, treedef.flatten_up_to(params), strict=True))
        ]
        steps = commit_state(check_commit(commit), optax.safe_increment(state.steps), state.steps)
        return jax.tree.unflatten(treedef, landed), state._replace(steps=steps)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
