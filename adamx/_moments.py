"""The Adam arithmetic, exactly as Keras 3 writes it (plus amsgrad and a Nesterov option)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from adamx import _blockwise as blockwise
from adamx._commit import check_commit, commit_state
from adamx._hyperparams import LearningRate, learning_rate_schedule
from adamx._rounding import random_bits, round_to, rounding_key, swap_halves
from adamx._trees import (
    abs_square,
    as_arrays,
    check_floating,
    check_same_structure,
    compute_dtype,
    leaf_indices,
    path_str,
    real_dtype,
    tree_map_multi,
    zeros_in,
)
from adamx._validation import check_bool, check_int, check_real, check_seed, check_storage


class ScaleByKerasAdamState(NamedTuple):
    """State of `scale_by_keras_adam`; the slot names in comments are Keras's."""

    count: jax.Array  # type: ignore[assignment]  # int32[]: updates applied so far (Keras `iterations`)
    next_learning_rate: jax.Array  # float32[]: the rate the next update will use
    mu: optax.Updates  # like params, dtype mu_dtype or the params': `momentum`
    nu: optax.Updates  # like params: `velocity`, the raw (uncorrected) average of g²
    nu_max: optax.Updates | None  # like params if amsgrad, else None: `velocity_hat`
    rounding_seed: jax.Array | None = None  # uint32[] with stochastic rounding, else None
    # With 8-bit moments (`mu_dtype="8bit"`, `nu_dtype="8bit"`), the codes are in `mu`, `nu`
    # and `nu_max`, and each tensor's per-block scales here (float32[*shape[:-1], blocks];
    # float32[] for tensors kept as floats: Orbax cannot save empty arrays); None for moments
    # stored as floats.
    mu_scales: optax.Updates | None = None
    nu_scales: optax.Updates | None = None
    nu_max_scales: optax.Updates | None = None


def check_beta(name: str, value: Any) -> None:
    if callable(value):
        raise TypeError(
            f"`{name}` must be a float in [0, 1). Keras accepts a callable here but fails on the "
            f"first update; to change `{name}` during training, use "
            f"`optax.inject_hyperparams(adamx.adam)`. Received: {name}={value!r}"
        )
    check_real(name, value, low=0.0, high=1.0, high_open=True)


class _Storage(NamedTuple):
    """How the moments are stored: their float dtypes (None: the parameters'), whether m and
    v are in 8 bits, and the smallest tensor stored in 8 bits (smaller ones keep floats)."""

    floats: tuple[Any, Any]
    eight_bit: tuple[bool, bool]
    min_size: int

    @classmethod
    def of(cls, mu_dtype: Any, nu_dtype: Any, min_8bit_size: Any, rounding_seed: Any) -> Any:
        """Checks the arguments, and refuses what 8-bit moments do not support."""
        eight_bit = (check_storage("mu_dtype", mu_dtype), check_storage("nu_dtype", nu_dtype))
        if min_8bit_size is not None:
            check_int("min_8bit_size", min_8bit_size, low=1)
            if not any(eight_bit):
                raise ValueError(
                    '`min_8bit_size` has no effect without `mu_dtype="8bit"` or `nu_dtype="8bit"`.'
                )
        if any(eight_bit) and rounding_seed is not None:
            raise ValueError(
                "`rounding_seed` rounds float moments stochastically; 8-bit moments round to "
                "nearest only. Drop `rounding_seed`, or use float moments (for example "
                "`mu_dtype=jnp.bfloat16`) to round them stochastically."
            )
        floats = (None if eight_bit[0] else mu_dtype, None if eight_bit[1] else nu_dtype)
        size = blockwise.MIN_8BIT_SIZE if min_8bit_size is None else min_8bit_size
        return cls(floats, eight_bit, size)

    def in_8bit(self, x: Any) -> tuple[bool, bool, bool]:
        """Whether m, v and v-hat of a tensor like `x` are stored in 8 bits."""
        large = blockwise.applies(jnp.shape(x), self.min_size)
        return self.eight_bit[0] and large, self.eight_bit[1] and large, self.eight_bit[1] and large

    def zeros(self, params: optax.Params, amsgrad: bool) -> dict[str, Any]:
        """The initial moments and their scales, as `ScaleByKerasAdamState` fields."""
        kinds = [("mu", 0, blockwise.SIGNED), ("nu", 1, blockwise.UNSIGNED)]
        kinds += [("nu_max", 1, blockwise.UNSIGNED)] if amsgrad else []
        fields = {"nu_max": None, "nu_max_scales": None}
        for name, i, code in kinds:
            fields[name], fields[f"{name}_scales"] = self._zeros(params, i, code)
        return fields

    def _zeros(self, params: optax.Params, i: int, code: blockwise.Format) -> tuple[Any, Any]:
        real = not code.signed  # a second moment is real for complex parameters
        if not self.eight_bit[i]:
            return zeros_in(params, self.floats[i], real=real), None

        def zeros(path: Any, p: Any) -> _Pair:
            if not self.in_8bit(p)[i]:  # kept as floats, with a placeholder scale
                return _Pair(zeros_in(p, None, real=real), jnp.zeros([], jnp.float32))
            if jnp.issubdtype(jnp.result_type(p), jnp.complexfloating):
                raise TypeError(
                    f"8-bit moments take real parameters; the leaf at '{path_str(path)}' is "
                    f"{jnp.result_type(p)}. Keep complex parameters out of `mu_dtype`/"
                    '`nu_dtype` "8bit" (for example with `optax.partition`), or raise '
                    "`min_8bit_size`."
                )
            _check_blocks_in_shards(path, p)
            return _Pair(*blockwise.zeros(p, code))

        pairs = jax.tree_util.tree_map_with_path(zeros, params)
        is_pair = lambda x: isinstance(x, _Pair)  # noqa: E731
        values = jax.tree.map(lambda x: x.values, pairs, is_leaf=is_pair)
        return values, jax.tree.map(lambda x: x.scales, pairs, is_leaf=is_pair)

    def used_scales(self, g: jax.Array, scales: tuple[Any, ...]) -> Any:
        """A leaf's scales of m, v and v-hat where stored in 8 bits; None for floats."""
        return tuple(x if q else None for x, q in zip(scales, self.in_8bit(g), strict=True))

    def new_scales(self, g: jax.Array, old: tuple[Any, ...], new: tuple[Any, ...]) -> tuple:
        """A leaf's scales after the step: the new ones where stored in 8 bits, a fresh
        placeholder where the tensor keeps floats (passing the old one through costs XLA:CPU
        a copy kernel per tensor)."""
        return tuple(
            None if o is None else n if q else jnp.zeros([], jnp.float32)
            for o, n, q in zip(old, new, self.in_8bit(g), strict=True)
        )


class _Pair(NamedTuple):
    values: jax.Array
    scales: jax.Array


def scale_by_keras_adam(
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    *,
    learning_rate: LearningRate = 1.0,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    rounding_seed: int | None = None,
    min_8bit_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales gradients by Keras's Adam rule, with epsilon-hat and the learning rate inside.

    With `t` the number of this update (1 on the first) and `lr` the learning rate at `t - 1`::

        m     <- m + (g - m) * (1 - beta_1)
        v     <- v + (g**2 - v) * (1 - beta_2)
        alpha  = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        out    = (m * alpha) / (sqrt(v) + epsilon)

    `epsilon` is Keras's "epsilon hat": it is added to the root of the *uncorrected* `v`. The
    moment form `m + (g - m)(1 - beta)` and the order of operations are Keras's, so float32
    results are Keras's bit for bit when both run op by op.

    - `amsgrad=True` (Keras's `amsgrad`): `v_hat <- max(v_hat, v)` over the raw `v`, and
      `sqrt(v_hat)` replaces `sqrt(v)` (optax's `scale_by_amsgrad` maxes the bias-corrected
      value instead, a different algorithm).
    - `nesterov=True` (not in Keras; optax's `scale_by_adam(nesterov=True)` with epsilon-hat)::

        out = (beta_1 * m / (1 - beta_1**(t+1)) + (1 - beta_1) * g / (1 - beta_1**t))
              * lr * sqrt(1 - beta_2**t) / (sqrt(v) + epsilon)

    Complex parameters train as in optax's Adam: `g**2` reads `|g|**2 = (conj(g) * g).real`, so
    `m` is complex and `v` (and v-hat) real, stored in the real dtype of the parameter's
    precision (optax stores it complex; the imaginary half would be zero). Keras has no complex
    variables; real dtypes keep Keras's bits.

    The output is the positive step Keras subtracts; negate it (`optax.scale(-1.0)`) to apply
    it with `optax.apply_updates`. `learning_rate` defaults to 1, making this a drop-in for
    `optax.scale_by_adam`; `adamx.adam` passes the real rate because Keras folds it into `alpha`
    (multiplying afterwards changes bits). float16 and bfloat16 parameters keep their moments in
    their own dtype (Keras's slots) but compute in float32; Keras computes in the low precision,
    where bfloat16 rounds `beta_2 = 0.999` to 1 and parameters never move.

    8-bit moments (`mu_dtype="8bit"`, `nu_dtype="8bit"`; not in Keras) store each tensor of
    `min_8bit_size` elements or more as 8-bit float codes with a float32 scale per block of 256
    elements along its last axis (fewer where a power of two tiles the axis better; see
    the design notes): about 1.02 bytes per element and moment. `m` takes a signed code
    (4 exponent, 3 mantissa bits), `v` an unsigned one with the range a second moment needs
    (5 exponent, 3 mantissa bits: 32 octaves), and v-hat shares `v`'s. Each block's scale is
    a running bound of its largest magnitude, from the block's largest `|g|`::

        scale_m <- beta_1 * scale_m + (1 - beta_1) * max|g| / 448
        scale_v <- beta_2 * scale_v + (1 - beta_2) * max|g|**2 / 122880
        scale_v_hat <- max(scale_v_hat, scale_v)

    The arithmetic is float32 (or wider); the step uses this call's moments as computed (the
    state stores them rounded to nearest: within 2**-4, relative), so rounding reaches the
    parameters through the next calls only. A stored `v` never reads as 0 where its block has
    a scale, so `m / (sqrt(v) + epsilon)` stays bounded. Smaller tensors and scalars keep
    their moments as floats (the parameters' dtype); complex parameters in 8 bits are
    refused, and so is a `rounding_seed`. (bitsandbytes' and torchao's 8-bit Adam use the
    block's exact maximum as its scale; a running bound needs no reduction over the new
    moments, which XLA:CPU runs slowly; see the design notes.)

    Given `commit` (a boolean scalar extra argument, see `adamx.Committable`), the state is kept
    where it is False, and the output is computed from the kept moments, so that XLA updates
    them in place instead of copying them (with 8-bit moments the output is then unspecified:
    adamx's wrappers replace it with -0.0).

    Args:
      beta_1: decay of the first moment, in [0, 1).
      beta_2: decay of the second moment, in [0, 1).
      epsilon: epsilon-hat, > 0.
      amsgrad: use the running maximum of the raw second moment.
      learning_rate: a number, a schedule `count -> rate`, or a zero-argument callable.
      nesterov: use the Nesterov-accelerated first moment.
      mu_dtype: storage dtype of the first moment; None keeps the parameters' dtype; "8bit"
        stores it in 8-bit blocks. Complex parameters keep a complex first moment, at least
        complex64.
      nu_dtype: storage dtype of the second moment and of v-hat (a running maximum of the same
        quantity, so they share it); None keeps the parameters' (real) dtype; "8bit" stores
        them in 8-bit blocks.
      rounding_seed: None rounds the moments to nearest when they are stored in a narrower
        dtype than they are computed in; an integer in [0, 2**32) rounds them stochastically,
        with random bits from this seed (kept in the state), the step and the element's index:
        bit-identical runs for one seed, and after a resume. The updates then stay in the
        compute dtype (float32 for bfloat16 parameters), so that the parameters can be rounded
        stochastically too (`adamx.stochastic_round_params`).
      min_8bit_size: with 8-bit moments, the smallest tensor (in elements) stored in 8 bits;
        None is 4096, as in bitsandbytes.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> tx = optax.chain(adamx.scale_by_keras_adam(learning_rate=0.5), optax.scale(-1.0))
      >>> params = jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> updates, _ = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(params))
      >>> optax.apply_updates(params, updates)
      Array([0.50000495, 1.5000036 , 2.5000036 , 3.500004  ], dtype=float32)
    """
    check_beta("beta_1", beta_1)
    check_beta("beta_2", beta_2)
    check_real("epsilon", epsilon, low=0.0, low_open=True)
    check_bool("amsgrad", amsgrad)
    check_bool("nesterov", nesterov)
    check_seed("rounding_seed", rounding_seed)
    storage = _Storage.of(mu_dtype, nu_dtype, min_8bit_size, rounding_seed)
    schedule = learning_rate_schedule(learning_rate)

    def rate(count: jax.Array) -> jax.Array:
        # A copy: a schedule may return an array it keeps, and states get donated.
        return jnp.array(schedule(count), jnp.float32)

    def init_fn(params: optax.Params) -> ScaleByKerasAdamState:
        check_floating(params)
        count = jnp.zeros([], jnp.int32)
        return ScaleByKerasAdamState(
            count=count,
            next_learning_rate=rate(count),
            rounding_seed=None if rounding_seed is None else jnp.asarray(rounding_seed, jnp.uint32),
            **storage.zeros(params, amsgrad),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByKerasAdamState,
        params: optax.Params | None = None,
        *,
        commit: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByKerasAdamState]:
        del params, extra_args
        commit, updates = check_commit(commit), as_arrays(updates)
        check_same_structure("updates", updates, "the optimizer state's moments", state.nu)
        step, learning_rate = optax.safe_increment(state.count), schedule(state.count)
        leaves = (jax.tree.leaves(x) for x in (updates, state.mu, state.nu))
        dtypes = {_real_compute_dtype(*gmv) for gmv in zip(*leaves, strict=True)}
        scalars = {d: _StepScalars.of(step, learning_rate, beta_1, beta_2, d) for d in dtypes}
        seed = state.rounding_seed
        key = None if seed is None else rounding_key(seed, step, 1)
        hyper = (beta_1, beta_2, epsilon, amsgrad, nesterov, commit, key)

        def one_leaf(g: jax.Array, m: jax.Array, v: jax.Array, v_max: Any, *rest: Any) -> tuple:
            leaf, scales = rest[0], rest[1:]
            # The update takes the parameters' dtype: the one `nu` has, unless `nu_dtype` sets
            # another; then the gradient's. With a seed it stays in the compute dtype, for the
            # parameters' own rounding (`stochastic_round_params`).
            compute = _real_compute_dtype(g, m, v)
            out_dtype = compute if seed is not None else (v if nu_dtype is None else g).dtype
            used = storage.used_scales(g, scales)
            outputs = _adam_leaf(hyper, scalars[compute], g, m, v, v_max, out_dtype, leaf, used)
            return *outputs[:4], *storage.new_scales(g, scales, outputs[4:])

        nu_max = state.nu_max if amsgrad else state.nu
        scales = (state.mu_scales, state.nu_scales, state.nu_max_scales)
        nones = jax.tree.map(lambda _: None, state.nu)  # no scales: moments stored as floats
        trees: tuple[Any, ...] = (updates, state.mu, state.nu, nu_max, leaf_indices(state.nu))
        trees += tuple(nones if x is None else x for x in scales)
        out, mu, nu, nu_max, *new_scales = tree_map_multi(one_leaf, 7, *trees)
        count, next_rate = commit_state(
            commit, (step, rate(step)), (state.count, state.next_learning_rate)
        )
        nu_max = nu_max if amsgrad else None
        new_scales = [None if x is None else y for x, y in zip(scales, new_scales, strict=True)]
        return out, ScaleByKerasAdamState(count, next_rate, mu, nu, nu_max, seed, *new_scales)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _StepScalars(NamedTuple):
    """The per-call scalars of one compute dtype: computed once per dtype, not per leaf (the
    same values, a much shorter trace for trees of many tensors)."""

    alpha: jax.Array  # lr * sqrt(1 - beta_2**t) / (1 - beta_1**t), Keras's step size
    lr_root: jax.Array  # lr * sqrt(1 - beta_2**t), for Nesterov
    b1_correction: jax.Array  # 1 - beta_1**t
    b1_next_correction: jax.Array  # 1 - beta_1**(t + 1), for Nesterov

    @classmethod
    def of(cls, step: jax.Array, lr: Any, beta_1: float, beta_2: float, dtype: Any) -> _StepScalars:
        t = step.astype(dtype)
        b1_power = jnp.power(jnp.asarray(beta_1, dtype), t)
        b2_power = jnp.power(jnp.asarray(beta_2, dtype), t)
        lr_root = jnp.asarray(lr).astype(dtype) * jnp.sqrt(1 - b2_power)
        b1_next_power = jnp.power(jnp.asarray(beta_1, dtype), t + 1)
        return cls(lr_root / (1 - b1_power), lr_root, 1 - b1_power, 1 - b1_next_power)


def _real_compute_dtype(g: jax.Array, m: jax.Array, v: jax.Array) -> Any:
    """float32 at least, wider where the gradient or a stored moment is (8-bit codes count
    as float32)."""
    stored = (d if jnp.dtype(d).itemsize > 1 else jnp.float32 for d in (m.dtype, v.dtype))
    return compute_dtype(real_dtype(g.dtype), *map(real_dtype, stored))


def _adam_leaf(
    hyper: tuple[Any, ...],
    s: _StepScalars,
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    v_max: Any,
    out_dtype: Any,
    leaf: int,
    scales: tuple[Any, Any, Any],
) -> tuple[Any, ...]:
    """One leaf's step, new moments and new scales, in Keras's order of operations (float32
    at least). `scales` holds the per-block scales of the moments (m, v, v-hat) stored in 8
    bits, None for those stored as floats.

    The step reads float moments as the state stores them (rounded to their storage dtype):
    then XLA computes each moment once, in the kernel that stores it, and the parameter kernel
    reads the stored values, instead of recomputing the moments from the old ones, which it
    would have to keep (a copy of each) while their buffers are overwritten. 8-bit moments are
    read as computed (XLA recomputes them from the old codes, which costs less than decoding
    the new ones; their copies are a byte per element)."""
    beta_1, beta_2, epsilon, amsgrad, nesterov, commit, key = hyper
    # One hash per element: its two halves round the two moments (v-hat is the maximum of
    # two stored values, so it is stored exactly).
    bits = None if key is None else random_bits(key, leaf, g.shape)
    real = _real_compute_dtype(g, m, v)
    dtype = jnp.result_type(real, m.dtype) if jnp.iscomplexobj(m) else real
    if jnp.iscomplexobj(m):
        out_dtype = jnp.result_type(out_dtype, jnp.complex64)
    m_scales, v_scales, v_max_scales = scales
    n, blocked = g.shape[-1:], scales != (None, None, None)
    if blocked:  # 8-bit moments: the arithmetic runs on `blockwise.to_blocks` views
        g, m, v = (blockwise.to_blocks(x) for x in (g, m, v))
        v_max = None if v_max is None else blockwise.to_blocks(v_max)
    # The new scales of 8-bit moments: one pass over the gradient's blocks.
    moments = ((m_scales, beta_1, blockwise.SIGNED, 1), (v_scales, beta_2, blockwise.UNSIGNED, 2))
    eight_bit = [moment for moment in moments if moment[0] is not None]
    next_scales = iter(blockwise.next_scales(g, eight_bit) if blocked else ())
    m_next, v_next = (None if x is None else next(next_scales) for x in (m_scales, v_scales))

    def stored(new: jax.Array, old: jax.Array, bits: Any) -> tuple[jax.Array, jax.Array]:
        """`new` as the state stores it, and as the step reads that back. Where `commit` is
        False, `old` (selected in the compute dtype, so the step reads the very buffer XLA
        then updates in place)."""
        if commit is not None:
            new = jnp.where(commit, new, old.astype(new.dtype))
        kept = round_to(new, old.dtype, bits)
        return kept, kept.astype(new.dtype)

    def kept(new: jax.Array, old: jax.Array, old_scales: Any, scales: Any, bits: Any) -> tuple:
        """(state leaf, value the step reads, scales) of a moment stored as floats (scales
        None) or in 8 bits (`scales` the new scales)."""
        if old_scales is None:
            return (*stored(new, old, bits), None)
        return _stored_8bit(new, old, old_scales, scales, commit)

    g = g.astype(dtype)
    m_old = _read(m, m_scales, blockwise.SIGNED, dtype)
    v_old = _read(v, v_scales, blockwise.UNSIGNED, real)
    m_new = m_old + (g - m_old) * (1 - beta_1)
    m, m_read, m_scales = kept(m_new, m, m_scales, m_next, bits)
    v_new = v_old + (abs_square(g) - v_old) * (1 - beta_2)
    v_bits = None if bits is None else swap_halves(bits)
    v, v_read, v_scales = kept(v_new, v, v_scales, v_next, v_bits)
    if amsgrad:
        v_max_new = jnp.maximum(_read(v_max, v_max_scales, blockwise.UNSIGNED, real), v_read)
        v_max_next = None if v_next is None else jnp.maximum(v_max_scales, v_next)
        v_max, v_read, v_max_scales = kept(v_max_new, v_max, v_max_scales, v_max_next, None)
    root_v = jnp.sqrt(v_read)
    if nesterov:
        m_hat = beta_1 * m_read / s.b1_next_correction + (1 - beta_1) * g / s.b1_correction
        out = (m_hat * s.lr_root) / (root_v + epsilon)
    else:
        out = (m_read * s.alpha) / (root_v + epsilon)
    outputs: tuple[Any, ...] = (out.astype(out_dtype), m, v, v_max)
    if blocked:
        outputs = tuple(blockwise.from_blocks(x, n[0]) for x in outputs)
    return *outputs, m_scales, v_scales, v_max_scales


def _check_blocks_in_shards(path: Any, p: Any) -> None:
    """Refuses a tensor sharded on its last axis over an `AxisType.Explicit` mesh into shards
    that split its blocks: JAX would need a collective to reshape it into blocks, and does
    not insert one on explicit axes (on `AxisType.Auto` meshes XLA does)."""
    sharding = blockwise.placement(p)
    if not isinstance(sharding, NamedSharding):
        return
    axes = blockwise.last_axes(sharding, p.ndim)
    explicit = set(axes) & set(getattr(sharding.mesh, "explicit_axes", ()))
    if explicit and blockwise.last_axis_splits_blocks(sharding, p.shape):
        raise ValueError(
            f"8-bit moments: the leaf at '{path_str(path)}' (shape {tuple(p.shape)}) has its "
            f"last axis sharded over {axes} of an `AxisType.Explicit` mesh, into shards that "
            f"split its blocks of {blockwise.block_size(p.shape[-1])} elements. Shard another "
            "axis, keep this leaf's moments as floats (raise `min_8bit_size`, or "
            "`optax.partition`), or use an `AxisType.Auto` mesh."
        )


def _read(stored: jax.Array, scales: Any, code: blockwise.Format, dtype: Any) -> jax.Array:
    """A moment from the state, in `dtype`: decoded where it has scales (8 bits)."""
    if scales is None:
        return stored.astype(dtype)
    return blockwise.decode(stored, scales, code, dtype)


def _stored_8bit(
    new: jax.Array, old: jax.Array, old_scales: jax.Array, scales: jax.Array, commit: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(codes, the value the step reads, scales) of a moment stored in 8 bits; where `commit`
    is False, the old codes and scales (the step's value is then unspecified)."""
    code = blockwise.SIGNED if old.dtype == blockwise.SIGNED.dtype else blockwise.UNSIGNED
    codes = blockwise.encode(new, scales, code)
    if commit is not None:
        codes = jnp.where(commit, codes, old)
        scales = jnp.where(commit, scales, old_scales)
    return codes, new, scales
