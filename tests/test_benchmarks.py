"""`python -m adamx.benchmarks` runs: its table, its JSON and its flags.

Times are measured by the benchmark, never here; XLA's own counts of the compiled steps are
checked in `test_compiled_programs.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamx import benchmarks


def test_main_writes_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--trees", "many_small", "--scale", "0.005", "--repeats", "1", "--no-torch"]
    assert benchmarks.main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    names = [row["optimizer"] for row in rows]
    assert names[0] == "optax.adam" and "adamx.adam(all features)" in names
    assert all(row["median_ms"] > 0 and row["kernels"] > 0 for row in rows)
    for row in rows:  # each ratio is its row's median over the baseline's, in the same run
        ratio = row["median_ms"] / rows[0]["median_ms"]
        assert row["vs_optax_adam"] == pytest.approx(ratio)
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
