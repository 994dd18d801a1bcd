"""The README's main job: `lpt-train` with no arguments, from an arbitrary working directory."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lpt.logging import read_run
from test_configs import lpt_train


@pytest.mark.optimized
def test_default_main_job_reaches_97_percent(tmp_path):
    t0 = time.perf_counter()
    proc = lpt_train([], tmp_path)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = list((tmp_path / "runs").glob("*/*/run.h5"))
    assert len(logs) == 1, logs
    rec = read_run(logs[0])
    h = rec.history
    np.testing.assert_array_equal(h["step"], np.arange(1, 1001))
    assert h["val_acc"][-1] >= 0.97
    assert h["loss"][-1] < h["loss"][0]
    assert rec.attrs["status"] == "completed"
    assert (logs[0].parent / "checkpoint.npz").is_file()
    assert "step 1000/1000" in proc.stderr + proc.stdout
    print(f"lpt-train (defaults): val_acc {h['val_acc'][-1]:.3f}, wall time {elapsed:.1f} s")
