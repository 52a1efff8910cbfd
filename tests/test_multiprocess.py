"""A data-parallel adamx run on JAX's multi-process runtime: two processes on this machine, each
with 4 CPU devices, joined by `jax.distributed` over localhost (`multiprocess_worker.py`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

HERE = Path(__file__).parent
# The children import the same adamx as this process: the checkout, not an installed copy.
PYTHONPATH = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
# Across processes gloo adds the devices' gradient sums in another order than XLA's in-process
# all-reduce; Adam carries the last-bit differences on: measured 1.3e-7 after 20 steps.
ONE_PROCESS_ATOL = 2e-6
TIMEOUT = 240  # seconds for one launch; a healthy one takes about 30 on 2 cores


# The worker sets its own device count with `jax_num_cpu_devices`, which older JAX lacks.
pytestmark = pytest.mark.skipif(
    "jax_num_cpu_devices" not in jax.config.values,
    reason="this JAX has no jax_num_cpu_devices setting",
)


class LaunchFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(num_processes: int, mode: str, workdir: Path, timeout: float = TIMEOUT) -> list[str]:
    """Runs the worker as `num_processes` processes; returns their output. The first process to
    fail, or the timeout, stops all of them and raises `LaunchFailed` with every output."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": PYTHONPATH}
    env.pop("XLA_FLAGS", None)  # the device count is the worker's to set
    logs = [workdir / f"{mode}-{i}.log" for i in range(num_processes)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "multiprocess_worker.py",
                str(i),
                str(num_processes),
                str(port),
                str(workdir),
                mode,
            ],
            cwd=HERE,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i, log in enumerate(logs)
    ]
    deadline, failure = time.monotonic() + timeout, None
    try:
        while failure is None:
            codes = [p.poll() for p in procs]
            failure = next(
                (f"process {i} exited with {c}" for i, c in enumerate(codes) if c not in (None, 0)),
                None,
            )
            if None not in codes:
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout:.0f} s"
            time.sleep(0.2)
    finally:
        for p in procs:  # whatever happened, no process outlives the launch
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    outputs = [log.read_text() for log in logs]
    if failure is not None:
        raise LaunchFailed(
            failure + "".join(f"\n--- process {i}:\n{o[-3000:]}" for i, o in enumerate(outputs))
        )
    return outputs


def load(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def losses(output: str) -> list[float]:
    return [float(line.split()[-1]) for line in output.splitlines() if line.startswith("step ")]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path: Path) -> None:
    """20 steps on 2 processes x 4 devices with ZeRO state; resumed from the orbax checkpoint
    both processes wrote at step 10: bit-identical; the same run on one process: equal."""
    pytest.importorskip("orbax.checkpoint")  # the workers checkpoint with it
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    outputs = launch(2, "train", two)
    assert all("done" in output for output in outputs)
    trained = losses(outputs[0])
    print(f"two processes: loss {trained[0]:.4f} -> {trained[-1]:.4f}")
    assert len(trained) == 20 and trained[-1] < 0.8 * trained[0], trained
    launch(2, "resume", two)
    for straight, resumed in zip(load(two / "train.npz"), load(two / "resume.npz"), strict=True):
        assert np.array_equal(straight, resumed)

    launch(1, "train", one)
    pairs = list(zip(load(two / "train.npz"), load(one / "train.npz"), strict=True))
    assert all(a.shape == b.shape for a, b in pairs)
    deviation = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    print(f"two processes vs one process, 8 devices each run: max |deviation| {deviation:.3g}")
    assert deviation <= ONE_PROCESS_ATOL


def test_a_dying_process_fails_the_launch(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(LaunchFailed, match="process 1 exited with 3"):
        launch(2, "die", tmp_path, timeout=120)
    assert time.monotonic() - start < 90  # failed fast, not at the timeout
