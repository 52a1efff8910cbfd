"""The Adam arithmetic, exactly as Keras 3 writes it (plus amsgrad and a Nesterov option)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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
    real_dtype,
    tree_map_multi,
    zeros_in,
)
from adamx._validation import check_bool, check_dtype, check_real, check_seed


class ScaleByKerasAdamState(NamedTuple):
    """State of `scale_by_keras_adam`; the slot names in comments are Keras's."""

    count: jax.Array  # type: ignore[assignment]  # int32[]: updates applied so far (Keras `iterations`)
    next_learning_rate: jax.Array  # float32[]: the rate the next update will use
    mu: optax.Updates  # like params, dtype mu_dtype or the params': `momentum`
    nu: optax.Updates  # like params: `velocity`, the raw (uncorrected) average of g²
    nu_max: optax.Updates | None  # like params if amsgrad, else None: `velocity_hat`
    rounding_seed: jax.Array | None = None  # uint32[] with stochastic rounding, else None


def check_beta(name: str, value: Any) -> None:
    if callable(value):
        raise TypeError(
            f"`{name}` must be a float in [0, 1). Keras accepts a callable here but fails on the "
            f"first update; to change `{name}` during training, use "
            f"`optax.inject_hyperparams(adamx.adam)`. Received: {name}={value!r}"
        )
    check_real(name, value, low=0.0, high=1.0, high_open=True)


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

    Given `commit` (a boolean scalar extra argument, see `adamx.Committable`), the state is
    kept where it is False, and the output is computed from the kept moments, so that XLA updates
    them in place instead of copying them.

    Args:
      beta_1: decay of the first moment, in [0, 1).
      beta_2: decay of the second moment, in [0, 1).
      epsilon: epsilon-hat, > 0.
      amsgrad: use the running maximum of the raw second moment.
      learning_rate: a number, a schedule `count -> rate`, or a zero-argument callable.
      nesterov: use the Nesterov-accelerated first moment.
      mu_dtype: storage dtype of the first moment; None keeps the parameters' dtype.
      nu_dtype: storage dtype of the second moment and of v-hat (a running maximum of the same
        quantity, so they share it); None keeps the parameters' (real) dtype.
      rounding_seed: None rounds the moments to nearest when they are stored in a narrower
        dtype than they are computed in; an integer in [0, 2**32) rounds them stochastically,
        with random bits from this seed (kept in the state), the step and the element's index:
        bit-identical runs for one seed, and after a resume. The updates then stay in the
        compute dtype (float32 for bfloat16 parameters), so that the parameters can be rounded
        stochastically too (`adamx.stochastic_round_params`).

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
    check_dtype("mu_dtype", mu_dtype)
    check_dtype("nu_dtype", nu_dtype)
    check_seed("rounding_seed", rounding_seed)
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
            mu=zeros_in(params, mu_dtype),
            nu=zeros_in(params, nu_dtype, real=True),
            nu_max=zeros_in(params, nu_dtype, real=True) if amsgrad else None,
            rounding_seed=None if rounding_seed is None else jnp.asarray(rounding_seed, jnp.uint32),
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
        leaf_index = leaf_indices(state.nu)

        def one_leaf(g: jax.Array, m: jax.Array, v: jax.Array, v_max: Any, leaf: int) -> tuple:
            # The update takes the parameters' dtype: the one `nu` has, unless `nu_dtype` sets
            # another; then the gradient's. With a seed it stays in the compute dtype, for the
            # parameters' own rounding (`stochastic_round_params`).
            compute = _real_compute_dtype(g, m, v)
            out_dtype = compute if seed is not None else (v if nu_dtype is None else g).dtype
            s = scalars[compute]
            return _adam_leaf(hyper, s, g, m, v, v_max, out_dtype, leaf)

        nu_max = state.nu_max if amsgrad else state.nu
        trees = (updates, state.mu, state.nu, nu_max, leaf_index)
        out, mu, nu, nu_max = tree_map_multi(one_leaf, 4, *trees)
        count, next_rate = commit_state(
            commit, (step, rate(step)), (state.count, state.next_learning_rate)
        )
        nu_max = nu_max if amsgrad else None
        return out, ScaleByKerasAdamState(count, next_rate, mu, nu, nu_max, seed)

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
    """float32 at least, wider where the gradient or a stored moment is."""
    return compute_dtype(real_dtype(g.dtype), real_dtype(m.dtype), v.dtype)


def _adam_leaf(
    hyper: tuple[Any, ...],
    s: _StepScalars,
    g: jax.Array,
    m: jax.Array,
    v: jax.Array,
    v_max: Any,
    out_dtype: Any,
    leaf: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One leaf's step and new moments, in Keras's order of operations (float32 at least).

    The step reads the moments as the state stores them (rounded to their storage dtype): then
    XLA computes each moment once, in the kernel that stores it, and the parameter kernel reads
    the stored values, instead of recomputing the moments from the old ones, which it would
    have to keep (a copy of each) while their buffers are overwritten."""
    beta_1, beta_2, epsilon, amsgrad, nesterov, commit, key = hyper
    # One hash per element: its two halves round the two moments (v-hat is the maximum of
    # two stored values, so it is stored exactly).
    bits = None if key is None else random_bits(key, leaf, g.shape)
    real = _real_compute_dtype(g, m, v)
    dtype = jnp.result_type(real, m.dtype)  # complex where the parameters are
    if jnp.iscomplexobj(m):
        out_dtype = jnp.result_type(out_dtype, jnp.complex64)

    def stored(new: jax.Array, old: jax.Array, bits: Any) -> tuple[jax.Array, jax.Array]:
        """`new` as the state stores it, and as the step reads that back. Where `commit` is
        False, `old` (selected in the compute dtype, so the step reads the very buffer XLA
        then updates in place)."""
        if commit is not None:
            new = jnp.where(commit, new, old.astype(new.dtype))
        kept = round_to(new, old.dtype, bits)
        return kept, kept.astype(new.dtype)

    g, m_old, v_old = g.astype(dtype), m.astype(dtype), v.astype(real)
    m, m_read = stored(m_old + (g - m_old) * (1 - beta_1), m, bits)
    v_bits = None if bits is None else swap_halves(bits)
    v, v_read = stored(v_old + (abs_square(g) - v_old) * (1 - beta_2), v, v_bits)
    if amsgrad:
        v_max, v_read = stored(jnp.maximum(v_max.astype(real), v_read), v_max, None)
    root_v = jnp.sqrt(v_read)
    if nesterov:
        m_hat = beta_1 * m_read / s.b1_next_correction + (1 - beta_1) * g / s.b1_correction
        out = (m_hat * s.lr_root) / (root_v + epsilon)
    else:
        out = (m_read * s.alpha) / (root_v + epsilon)
    return out.astype(out_dtype), m, v, v_max
