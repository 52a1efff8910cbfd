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
    argv = ["--quick", "--trees", "many_small", "--scale", "0.005", "--repeats", "1", "--no-torch"]
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
    assert data["skipped"] == ["--no-torch: the PyTorch rows are left out"]
    captured = capsys.readouterr()
    assert "optax.adam" in captured.out and "IQR ms" in captured.out
    assert "skipped: --no-torch: the PyTorch rows are left out" in captured.out
    # Progress as it goes, one line per optimizer built, on stderr (the table is on stdout).
    assert "many_small: building and compiling" in captured.err
    built = len(benchmarks.NAMES) - 2  # every candidate but torch's two rows
    assert f"[{built}/{built}] keras Adam(all + accum. 4)" in captured.err


def test_only_keeps_the_matching_optimizers_and_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--trees", "many_small", "--scale", "0.005", "--only", "grouped"]
    assert benchmarks.main([*argv, "--json", str(out)]) == 0
    names = [row["optimizer"] for row in json.loads(out.read_text())["results"]]
    assert names == ["optax.adam", "adamx grouped", "adamx grouped, leaf grads"]


@pytest.mark.parametrize("argv", [["--scale", "0"], ["--only", "("]], ids=["scale", "only"])
def test_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        benchmarks.main(argv)


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = benchmarks.parser()
    options = [action for action in parser._actions if action.option_strings]
    assert all(action.help for action in options)
    text = " ".join(parser.format_help().split())
    assert "(default: one_tensor transformer many_small)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "interquartile range" in text


def test_quick_is_small() -> None:
    """`--quick` must stay under a minute on 2 cores (measured: 38 s with the machine busy):
    small trees, one compile each."""
    quick = benchmarks.QUICK
    assert quick.compiles == 1 and quick.scale <= 0.01 and quick.layers == 1
    assert len(benchmarks.materialize(benchmarks.transformer(quick.scale, quick.layers), 0)) == 3
