"""float64 parameters (x64 mode) against Keras, in a subprocess so x64 stays out of this one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import keras, numpy as np
    from harness import check_against_keras
    from harness import random_grads, random_params

    cases = [
        {},
        {"learning_rate": 0.01, "weight_decay": 0.1, "use_ema": True, "global_clipnorm": 0.5},
        {"learning_rate": 0.01, "gradient_accumulation_steps": 3, "amsgrad": True},
    ]
    for kwargs in cases:
        params = random_params(0, dtype=np.float64)
        grads = random_grads(0, 30, params)
        ours, _, _ = check_against_keras(kwargs, params, grads, jit=False)
        assert all(x.dtype == np.float64 for x in jax.tree.leaves(ours)), kwargs
        check_against_keras(kwargs, params, grads, jit=True)

    # optax's float64 contract, over the contract configurations: float64 in, float64 out
    # (updates and every floating state leaf), and the float32 run's numbers to float32's
    # precision (the float32 path is the one checked against Keras bit for bit).
    import jax.numpy as jnp, optax
    from harness import CONTRACT_CONFIGS

    def run(tx, dtype):
        params = jax.tree.map(lambda p: p.astype(dtype), random_params(1, dtype=np.float64))
        state = tx.init(params)
        step = jax.jit(tx.update)
        for g in random_grads(1, 6, params):
            updates, state = step(jax.tree.map(lambda x: x.astype(dtype), g), state, params)
            params = optax.apply_updates(params, updates)
        return params, updates, state

    for name, make in CONTRACT_CONFIGS.items():
        params, updates, state = run(make(0.01), jnp.float64)
        floating = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
        wide = [x for x in floating if x.shape != ()]  # scalars: the loss scale is float32
        bfloat16_state = name.startswith("bfloat16 state")  # stored so on purpose
        if bfloat16_state:
            assert {x.dtype for x in wide} == {jnp.dtype(jnp.bfloat16)}, name
            wide = []
        eight_bit = name == "8-bit moments"  # float8 codes, float32 scales on purpose
        if eight_bit:
            codes = {jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float32)}
            assert {x.dtype for x in wide} <= codes, name
            wide = []
        for x in [*jax.tree.leaves(params), *jax.tree.leaves(updates), *wide]:
            assert x.dtype == jnp.float64, (name, x.dtype)
        narrow, _, _ = run(make(0.01), jnp.float32)
        # bfloat16 state: where float32 and float64 results straddle a rounding boundary, one
        # stored moment differs by a bfloat16 ulp, and so does that step: bounded by 2% of
        # the movement (6 steps of at most lr = 0.01).
        # 8-bit moments: the state's rounding (2**-4 relative) moves each later step by up to
        # about twice that; bounded by 25% of the movement (6 steps of at most lr = 0.01).
        atol = 0.02 * 6 * 0.01 if bfloat16_state else 0.25 * 6 * 0.01 if eight_bit else 1e-6
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(narrow), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=name)
    print("float64 ok")
    """
)


# The child imports the same adamx as this process: the checkout, not an installed copy.
ROOT = os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])


def test_float64_parameters_match_keras() -> None:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "float64 ok" in result.stdout
