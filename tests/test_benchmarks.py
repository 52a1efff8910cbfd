"""The benchmark runs, and the figures that do not depend on timing hold.

Times are measured by `python -m adamx.benchmarks`, never here; this checks the machinery and
XLA's own counts: the default adamx step accesses no more bytes and launches no more kernels
than `optax.adam`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import optax
import pytest

import adamx
from adamx import benchmarks


@pytest.mark.parametrize("tree", list(benchmarks.TREES))
def test_default_step_moves_no_more_bytes_and_kernels_than_optax(tree: str) -> None:
    shapes = benchmarks.TREES[tree](0.01)
    params = benchmarks.materialize(shapes, 0)
    grads = benchmarks.materialize(shapes, 1)
    size = sum(x.size for x in jax.tree.leaves(params))
    figures = {}
    for name, tx in {"optax": optax.adam(1e-3, eps=1e-7), "adamx": adamx.adam()}.items():
        candidate = benchmarks.jax_candidate(
            name, tx.init, benchmarks.optax_step(tx), params, grads, size
        )
        # Scalars (counters, the learning rate) add a few bytes: compare per-parameter figures.
        figures[name] = (
            round(candidate.passes, 2),
            candidate.kernels,
            round(candidate.state_bytes_per_param, 2),
        )
    print(tree, figures)
    (our_passes, our_kernels, our_state), (passes, kernels, state) = (
        figures["adamx"],
        figures["optax"],
    )
    assert our_passes <= passes and our_kernels <= kernels and our_state == state == 8.0


def compiled_step(tx: optax.GradientTransformation, params: Any, grads: Any) -> Any:
    step = jax.jit(benchmarks.optax_step(tx), donate_argnums=(0, 1))
    return step.lower(params, tx.init(params), grads).compile()


# Fusion decisions are XLA's: jax 0.5's XLA keeps one temporary and 17 passes for this step.
@pytest.mark.skipif(
    tuple(int(part) for part in jax.__version__.split(".")[:2]) < (0, 10),
    reason="measured on the XLA of jax 0.10; older XLA fuses this step differently",
)
def test_features_add_only_the_passes_their_state_needs() -> None:
    """All features on: one read of the gradients for the global norm, and the EMA's own
    traffic (read the new parameters and the average, write the average; the overwrite reads
    the average once more). No parameter-sized temporary, which XLA:CPU would page-fault on
    every call."""
    params = benchmarks.materialize(benchmarks.one_tensor(0.01), 0)
    grads = benchmarks.materialize(benchmarks.one_tensor(0.01), 1)
    size = params["w"].size
    passes, temporaries = {}, {}
    for name, tx in {
        "default": adamx.adam(),
        "all": adamx.adam(**benchmarks.ALL_FEATURES),
    }.items():
        compiled = compiled_step(tx, params, grads)
        passes[name] = benchmarks.bytes_accessed(compiled) / size / benchmarks.BYTES_PER_PASS
        temporaries[name] = compiled.memory_analysis().temp_size_in_bytes / (4 * size)
    print(passes, temporaries)
    assert passes["all"] <= passes["default"] + 1 + 3 + 1 + 0.01
    assert max(temporaries.values()) < 0.01


def test_grouped_step_launches_a_handful_of_kernels() -> None:
    params = benchmarks.materialize(benchmarks.many_small(0.05), 0)  # 100 tensors
    tx = adamx.adam()
    per_leaf = benchmarks.count_kernels(compiled_step(tx, params, params))
    grouped = adamx.group_leaves(params)
    assert benchmarks.count_kernels(compiled_step(tx, grouped, grouped)) <= 10 < 3 * 100 <= per_leaf


def test_kernel_count_grows_with_the_number_of_tensors() -> None:
    tx = optax.adam(1e-3)

    def kernels(n: int) -> int:
        params = {f"t{i}": jax.numpy.ones(8) for i in range(n)}
        compiled = (
            jax.jit(benchmarks.optax_step(tx)).lower(params, tx.init(params), params).compile()
        )
        return benchmarks.count_kernels(compiled)

    assert kernels(4) > kernels(1) >= 3


def test_main_writes_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--trees", "many_small", "--scale", "0.005", "--repeats", "1", "--no-torch"]
    assert benchmarks.main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    names = [row["optimizer"] for row in rows]
    assert names[0] == "optax.adam" and "adamx.adam(all features)" in names
    assert rows[0]["vs_optax_adam"] == 1.0
    assert all(row["median_ms"] > 0 and row["kernels"] > 0 for row in rows)
    assert data["machine"]["bandwidth_floor_gb_per_s"] > 0
    assert "optax.adam" in capsys.readouterr().out


def test_only_keeps_the_matching_optimizers_and_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--trees", "many_small", "--scale", "0.005", "--repeats", "1", "--only", "grouped"]
    assert benchmarks.main([*argv, "--json", str(out)]) == 0
    names = [row["optimizer"] for row in json.loads(out.read_text())["results"]]
    assert names == ["optax.adam", "adamx grouped", "adamx grouped, leaf grads"]


@pytest.mark.parametrize("argv", [["--scale", "0"], ["--only", "("]], ids=["scale", "only"])
def test_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        benchmarks.main(argv)
