"""`state_shardings` here, and the 8-device checks in their own process (`sharded_check.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import adamx
from adamx._trees import path_str

# The child imports the same adamx as this process: the checkout, not an installed copy.
ROOT = os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])


def test_state_shardings_mirror_the_state_on_one_device() -> None:
    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    params = jax.device_put(
        {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}, NamedSharding(mesh, PartitionSpec())
    )
    tx = adamx.adam(use_ema=True, amsgrad=True, gradient_accumulation_steps=2)
    shardings = adamx.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    for sharding, leaf in zip(jax.tree.leaves(shardings), jax.tree.leaves(state), strict=True):
        assert isinstance(sharding, NamedSharding) and leaf.sharding == sharding


def test_state_shardings_of_a_single_array_parameter() -> None:
    params = jnp.ones(3)
    shardings = adamx.state_shardings(optax.adam(1e-3), params)
    assert all(s == params.sharding for s in jax.tree.leaves(shardings))


def test_state_shardings_needs_placed_parameters() -> None:
    with pytest.raises(TypeError, match="'w' has none"):
        adamx.state_shardings(adamx.adam(), {"w": np.ones(3)})
    with pytest.raises(ValueError, match="at least one parameter"):
        adamx.state_shardings(adamx.adam(), {})


def run_on_8_devices(script: str, done: str) -> None:
    """Runs a check script in its own process (the device count is fixed when JAX starts)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, script],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-4000:]
    assert done in result.stdout


def test_sharded_training_on_8_simulated_devices() -> None:
    """State placement (printed leaf by leaf), global norms, sharded and data-parallel steps."""
    run_on_8_devices("sharded_check.py", "sharded checks ok")


def one_device_params() -> dict[str, jax.Array]:
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    params = {"w": jnp.ones((64, 8)), "b": jnp.zeros(8)}
    return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


def test_shard_over_splits_the_large_leaves_only() -> None:
    params = one_device_params()
    tx = adamx.adam(use_ema=True)
    shardings = adamx.state_shardings(tx, params, shard_over="data", min_shard_size=64)
    specs = {
        path_str(path): sharding.spec
        for path, sharding in jax.tree_util.tree_leaves_with_path(shardings)
    }

    def spec(suffix: str) -> PartitionSpec:
        (found,) = [v for k, v in specs.items() if k.endswith(suffix)]
        return found

    assert spec("mu/w") == spec("nu/w") == spec("average/w") == PartitionSpec("data", None)
    assert spec("mu/b") == spec("/count") == spec("/calls") == PartitionSpec()
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    report = adamx.sharding_report(state)
    assert "0/mu/w" in report and f"{64 * 8 * 4}" in report
    assert f"total: {sum(leaf.nbytes for leaf in jax.tree.leaves(state))} bytes" in report


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shard_over": "model"}, r"shard_over must name an axis of .*\('data',\); got 'model'"),
        ({"shard_over": "data", "min_shard_size": 0}, "min_shard_size must be an integer >= 1"),
    ],
)
def test_shard_over_checks_its_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adamx.state_shardings(adamx.adam(), one_device_params(), **kwargs)


def test_shard_over_needs_a_mesh() -> None:
    with pytest.raises(ValueError, match=r"shard_over must name an axis of .*\(\); got 'data'"):
        adamx.state_shardings(adamx.adam(), {"w": jnp.ones(3)}, shard_over="data")


@pytest.mark.slow
def test_zero_state_sharding_on_8_simulated_devices() -> None:
    """State bytes per device, the compiled step's collectives and memory, 20 steps' numbers."""
    run_on_8_devices("zero_check.py", "ZeRO checks ok")
