"""A stop signal while the first step compiles ends the run at once (issue 14): exit 128 + signal, the log's
status says so, and no step was taken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

EXE = str(Path(sys.executable).with_name("lpt-train"))


@pytest.mark.optimized  # XLA's defaults: the compilation must take long enough to be interrupted
def test_sigterm_while_compiling_ends_the_run_before_the_first_step(tmp_path):
    # a layer-parallel step of 2048 layers: its compilation takes tens of seconds here
    proc = subprocess.Popen([EXE, "solver=mgrit", "model.depth=2048", "train.steps=3", "logging.progress=false",
                             f"hydra.run.dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "XLA_FLAGS": ""})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "compiling the training step" in line:
            break
    time.sleep(1.0)  # into the tracing / compilation of the first step
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 143, output[-3000:]
    assert "first step done" not in output, output[-3000:]  # ended before the first step, not after it
    assert ("lpt-train: interrupted by SIGTERM while compiling the first step; nothing was trained; run the "
            "command again to start afresh") in output
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f.attrs["status"] == "interrupted: SIGTERM"
        assert "history" not in f or all(len(f["history"][k]) == 0 for k in f["history"])  # no row: no step
