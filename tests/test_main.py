"""`python -m adamx demo`: it trains, plots, compares with Keras, and rejects bad flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adamx.__main__ import main

pytest.importorskip("flax")
pytest.importorskip("matplotlib")


def test_demo_trains_plots_and_matches_keras(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["demo", "--steps", "400", "--seed", "1", "--out", str(tmp_path), "--compare-keras"])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 400
    assert metrics["eval_accuracy"] > 0.85 and metrics["eval_accuracy_ema"] > 0.8
    assert metrics["train_loss"] < 0.4  # chance level is log 2 = 0.69
    assert metrics["keras_max_deviation"] <= metrics["keras_tolerance"]
    assert metrics["keras_movement"] > 0.1
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "eval with EMA weights" in out and "largest deviation" in out


def test_compare_keras_fails_loudly_beyond_the_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from adamx import _demo

    monkeypatch.setattr(_demo, "KERAS_TOLERANCE", -1.0)  # any deviation, even 0, is too much
    assert main(["demo", "--steps", "20", "--out", str(tmp_path), "--compare-keras"]) == 1
    assert "FAILED" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "invalid choice"),
        (["demo", "--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["demo", "--steps", "ten"], "--steps: expected an integer >= 1, got 'ten'"),
        (["demo", "--seed", "x"], "--seed: invalid int value"),
        (["demo", "--color"], "unrecognized arguments: --color"),
    ],
)
def test_bad_flags_get_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(a_file)])
    assert "--out must be a folder" in capsys.readouterr().err


@pytest.mark.parametrize("steps", [1, 7])
def test_a_run_shorter_than_the_plot_window_writes_its_outputs(tmp_path: Path, steps: int) -> None:
    assert main(["demo", "--steps", str(steps), "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == steps
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bare_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m adamx" in out
    assert len(re.findall(r"^\s+demo\s", out, re.MULTILINE)) == 1


def test_help_lists_each_command_once_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert len(re.findall(r"^\s+demo\s", out, re.MULTILINE)) == 1
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "(default: 2000)" in out and "(default: demo-out)" in out
