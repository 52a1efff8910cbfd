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
