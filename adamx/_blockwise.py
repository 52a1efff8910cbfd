"""8-bit blockwise storage of Adam's moments: float codes with a float32 scale per block.

A quantised tensor keeps two arrays: 8-bit codes in the tensor's own shape, and a float32
scale per block of consecutive elements along the last axis, shape `shape[:-1] + (blocks,)`.
Blocks hold `BLOCK` elements, or a power of two down to `MIN_BLOCK` that tiles the last axis
(`block_size`). An element reads `decode(code) * scale`. Both arrays follow their parameter's
layout, so they shard like it (`adamx.state_shardings`).

The codes are 8-bit floats: the top bits of the float32 pattern of `x / scale`, rounded to
nearest (ties away from zero), so that encoding and decoding are a few integer operations
that XLA fuses into the kernels around them (XLA:CPU's own float8 conversion, and a lookup
in a 256-entry code as bitsandbytes uses, are several times slower there; see
`adamx/README.md`). Every code has 3 mantissa bits: a value in range reads back within
2**-4 of itself, relative.

- `SIGNED` (the first moment): sign, 4 exponent bits, 3 mantissa bits; the bit layout of
  `float8_e4m3fn`, whose dtype the codes are stored in (they read back with `.astype`).
  Magnitudes from 2**-6 to 448 (times the scale); below 2**-6 they round to 0 (no
  subnormal codes are produced).
- `UNSIGNED` (the second moment, which is never negative and needs the range): 5 exponent
  bits, 3 mantissa bits, no sign, stored as `uint8`. Magnitudes from 2**-15 to 122880 (times
  the scale), 32 octaves; smaller values read as 2**-15 (code 0): a second moment in a block
  with a non-zero scale never reads as zero, so `m / (sqrt(v) + epsilon)` stays bounded.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

BLOCK = 256  # elements per scale: bitsandbytes' and torchao's block size
MIN_BLOCK = 32  # shorter power-of-two blocks would cost more than 1/8 byte per element
MIN_8BIT_SIZE = 4096  # smaller tensors keep their moments unquantised (as bitsandbytes)
_U32 = jnp.uint32
_SMALLEST_NORMAL = np.float32(2.0**-126)  # a scale below it encodes as zeros (1/scale is inf)


class Format(NamedTuple):
    """An 8-bit float code: `exponent_bits` and 3 mantissa bits, with or without a sign."""

    dtype: Any  # storage dtype of the codes
    bias: int  # a code's magnitude is the float32 pattern's top 12 bits less this
    smallest: int  # the smallest non-zero magnitude (below it: 0, or for UNSIGNED itself)
    top: float  # the largest magnitude: a block's bound maps to it
    signed: bool


SIGNED = Format(jnp.float8_e4m3fn, 120 << 3, 8, 448.0, True)
UNSIGNED = Format(jnp.uint8, 112 << 3, 0, 122880.0, False)


def applies(shape: tuple[int, ...], min_size: int) -> bool:
    """Whether a tensor of this shape is stored in 8 bits: not a scalar, `min_size` elements
    or more."""
    return len(shape) > 0 and int(np.prod(shape)) >= min_size


def block_size(n: int) -> int:
    """The block of a last axis of `n` elements, chosen to tile it: the largest power of two
    up to `BLOCK` that divides `n` (384 -> 128) if at least `MIN_BLOCK`; else the whole axis
    if it is at most `BLOCK` (80 -> 80); else its largest divisor from `BLOCK / 2` to `BLOCK`
    (1000 -> 250); else `BLOCK`, the last block padded (slower). XLA:CPU vectorises the
    per-block arithmetic best for power-of-two blocks (blocks of 192: 2x slower, measured);
    padding costs float32 temporaries (6x)."""
    divisor = min(n & -n, BLOCK)
    if divisor >= MIN_BLOCK:
        return divisor
    if n <= BLOCK:
        return max(n, 1)
    return next((b for b in range(BLOCK, BLOCK // 2 - 1, -1) if n % b == 0), BLOCK)


def scales_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the per-block scales of a tensor of `shape`."""
    return (*shape[:-1], -(-shape[-1] // block_size(shape[-1])))


def full_spec(sharding: NamedSharding, ndim: int) -> list[Any]:
    """The sharding's partition spec, with an entry (None: unsharded) for each of `ndim` axes."""
    return list(sharding.spec) + [None] * (ndim - len(sharding.spec))


def last_axes(sharding: NamedSharding, ndim: int) -> tuple[str, ...]:
    """The mesh axes a tensor's last axis is sharded over."""
    last = full_spec(sharding, ndim)[-1]
    return () if last is None else (last,) if isinstance(last, str) else tuple(last)


def last_axis_splits_blocks(sharding: NamedSharding, shape: tuple[int, ...]) -> bool:
    """Whether the shards of a tensor's last axis would split its blocks."""
    axes = last_axes(sharding, len(shape))
    shards = int(np.prod([sharding.mesh.shape[axis] for axis in axes], dtype=np.int64))
    return shape[-1] % (shards * block_size(shape[-1])) != 0


def scales_sharding(sharding: Any, shape: tuple[int, ...]) -> Any:
    """The sharding of the scales of a tensor of `shape` and `sharding`: the tensor's, with the
    last axis replicated where its shards would split a block."""
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = full_spec(sharding, len(shape))
    if last_axis_splits_blocks(sharding, shape):
        spec[-1] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def placement(param: Any) -> Sharding | None:
    """The sharding a tensor carries: a placed array's or a `jax.ShapeDtypeStruct`'s (a
    NamedSharding or a single device), or a traced array's on an `AxisType.Explicit` mesh; None
    for others (XLA lays those out)."""
    if isinstance(param, jax.core.Tracer):
        typeof = getattr(jax, "typeof", None)  # JAX 0.6 and newer
        sharding = getattr(typeof(param), "sharding", None) if typeof else None
        explicit = isinstance(sharding, NamedSharding) and bool(
            getattr(sharding.mesh, "explicit_axes", None)
        )
        return sharding if explicit else None
    sharding = getattr(param, "sharding", None)
    return sharding if isinstance(sharding, (NamedSharding, SingleDeviceSharding)) else None


def zeros(param: Any, code: Format) -> tuple[jax.Array, jax.Array]:
    """Zero codes like `param`, and zero scales with the `scales_sharding` of its `placement`
    (`param` may be a `jax.ShapeDtypeStruct`)."""
    codes = jnp.zeros_like(param, code.dtype)
    sharding = placement(param)
    shape = scales_shape(param.shape)
    if sharding is None:
        return codes, jnp.zeros(shape, jnp.float32)
    scales = scales_sharding(sharding, param.shape)
    if isinstance(param, jax.core.Tracer):
        return codes, jnp.zeros(shape, jnp.float32, out_sharding=scales)
    return codes, jnp.zeros(shape, jnp.float32, device=scales)


def to_blocks(x: jax.Array) -> jax.Array:
    """`(..., n)` -> `(..., blocks, block_size(n))`, a last block padded with zeros. The
    arithmetic runs on this view: XLA:CPU then loads each scale once per block (a per-element
    index into the scales costs more than the arithmetic)."""
    size = block_size(x.shape[-1])
    pad = -x.shape[-1] % size
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape((*x.shape[:-1], -1, size))


def from_blocks(x: jax.Array, n: int) -> jax.Array:
    """The inverse of `to_blocks` for a last axis of `n` elements."""
    return x.reshape((*x.shape[:-2], -1))[..., :n]


def next_scales(blocks: jax.Array, moments: list[tuple[jax.Array, Any, Format, int]]) -> list:
    """The scales of moments updated as `new = old + (g**power - old) * (1 - beta)`, for each
    `(scales, beta, code, power)`: `|new| <= beta * |old| + (1 - beta) * max|g|**power` in
    each block, so a block's bound is this running average of `max|g|**power`, and it maps
    to the top code. (Not the block's exact maximum of `|new|`: a reduction over a computed
    value that XLA:CPU runs as a scalar loop.)

    One pass over the gradient's blocks for all the moments: a variadic reduction of
    `beta * scale + (1 - beta) * (+-g)**power / top`, whose maximum is the formula above
    (XLA:CPU vectorises it; `max(abs(g))` it runs as a scalar loop, several times slower)."""
    blocks = blocks.astype(jnp.float32)
    operands = []
    for scales, beta, code, power in moments:
        base = (scales * beta)[..., None]
        step = (1 - beta) / code.top
        operands += (
            [base + step * blocks**power, base - step * blocks]
            if power == 1
            else [base + step * blocks**power]
        )
    low = np.float32(-np.inf)
    maxima = jax.lax.reduce(
        tuple(operands),
        (low,) * len(operands),
        lambda a, b: tuple(jnp.maximum(x, y) for x, y in zip(a, b, strict=True)),
        (blocks.ndim - 1,),
    )
    new, i = [], 0
    for _, _, _, power in moments:
        new.append(jnp.maximum(maxima[i], maxima[i + 1]) if power == 1 else maxima[i])
        i += 2 if power == 1 else 1
    return new


def encode(x: jax.Array, scales: jax.Array, code: Format) -> jax.Array:
    """The codes of `x / scale` for a `to_blocks` view `x` (float32 arithmetic), rounded to
    nearest, saturating at `code.top`; NaNs encode as the top code (their block's scale is NaN
    then too)."""
    # A division per element, which LLVM hoists out of the loop over a block.
    safe = jnp.where(scales >= _SMALLEST_NORMAL, scales, np.float32(np.inf))[..., None]
    y = (x / safe).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(y, _U32)
    magnitude = jnp.minimum(bits & _U32(0x7FFFFFFF), _U32(np.float32(code.top).view(np.uint32)))
    # The top 12 bits (exponent and 3 mantissa bits), rounded at the 13th, less the bias.
    rounded = ((magnitude + _U32(1 << 19)) >> 20).astype(jnp.int32) - code.bias
    if code.signed:  # below the smallest code: 0, with the float32 sign bit on top
        rounded = jnp.where(rounded < code.smallest, 0, rounded)
        codes = rounded.astype(_U32) | ((bits >> 24) & _U32(0x80))
    else:  # below the smallest code: code 0, the smallest value
        codes = jnp.clip(rounded, 0, 255).astype(_U32)
    return jax.lax.bitcast_convert_type(codes.astype(jnp.uint8), code.dtype)


def decode(codes: jax.Array, scales: jax.Array, code: Format, dtype: Any) -> jax.Array:
    """The values the codes (a `to_blocks` view) stand for, in `dtype` (float32 or wider)."""
    bits = jax.lax.bitcast_convert_type(codes, jnp.uint8).astype(_U32)
    if code.signed:
        magnitude = bits & _U32(0x7F)
        pattern = ((magnitude + _U32(code.bias)) << 20) | ((bits & _U32(0x80)) << 24)
        value = jax.lax.bitcast_convert_type(pattern, jnp.float32)
        unscaled = jnp.where(magnitude == 0, 0.0, value)
    else:
        unscaled = jax.lax.bitcast_convert_type((bits + _U32(code.bias)) << 20, jnp.float32)
    return unscaled.astype(dtype) * scales[..., None].astype(dtype)
