"""The examples run as documented (a few steps; the full runs are the evidence in the docs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

import state_precision


def test_state_precision_runs_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    policies = ["float32 state", "bfloat16 state, stochastic", "bfloat16 params, stochastic"]
    arguments = ["--out", str(tmp_path), "--steps", "3", "--seeds", "1", "--tasks", "image"]
    state_precision.main([*arguments, "--policies", *policies])
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {name: runs[0] for name, runs in results["image"].items()}
    assert list(runs) == policies
    # Bytes per parameter from the state pytree: two float32 moments, then two bfloat16 ones.
    assert runs["float32 state"]["state_bytes_per_param"] == 8.0
    assert runs["bfloat16 state, stochastic"]["state_bytes_per_param"] == 4.0
    assert all(len(run["curve"]) >= 2 for run in runs.values())
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "| float32 state |" in (tmp_path / "results.md").read_text()
