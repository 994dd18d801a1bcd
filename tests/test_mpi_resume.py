"""Resume under MPI keeps the warm start (issue 13): the checkpoint holds the warm-start states of every layer
rank (gathered to rank 0 as the mesh lays them out), and each rank takes its blocks back on resume, so a
2-rank run resumed from step 3 ends with the uninterrupted history bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpt.logging import read_run

EXE = str(Path(sys.executable).with_name("lpt-train"))
RUN = ["solver=mgrit", "model.depth=16", "dtype=float64", "logging.progress=false", "train.eval_every=3",
       "parallel=mpi", "parallel.layers=2"]


def _mpirun(*args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("mpi4jax", reason="parallel=mpi needs mpi4jax: pip install '.[mpi]'")
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    env["XLA_FLAGS"] = ""
    proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", EXE, *RUN, *args],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow(seconds=150)
def test_a_resumed_mpi_run_keeps_its_warm_start(tmp_path):
    _mpirun("train.steps=6", f"hydra.run.dir={tmp_path / 'whole'}")
    _mpirun("train.steps=3", f"hydra.run.dir={tmp_path / 'part'}")
    with np.load(tmp_path / "part" / "checkpoint.npz") as ckpt:
        names = list(ckpt["names"])
        ys = ckpt[f"leaf_{names.index('solver_state.ys'):05d}"]
    # both chunks' states with their halo points (2 × (8 + 1) rows here), none of them left at zero
    assert ys.shape[0] == 2 * (16 // 2 + 1) and np.all(np.abs(ys).reshape(ys.shape[0], -1).max(axis=1) > 0)
    _mpirun("train.steps=6", f"resume={tmp_path / 'part'}")
    a, b = read_run(tmp_path / "whole").history, read_run(tmp_path / "part").history
    np.testing.assert_array_equal(b["step"], np.arange(1, 7))
    for key in ("loss", "objective", "grad_norm", "train_acc", "val_acc"):
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    ma, mb = read_run(tmp_path / "whole").mgrit, read_run(tmp_path / "part").mgrit
    np.testing.assert_array_equal(mb["fwd_residual"], ma["fwd_residual"])
