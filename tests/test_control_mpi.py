"""`lpt-train` under `mpirun -np 2` (two layer ranks): one log, written by rank 0, equal to the single-process
run's (float32); the adaptive inexactness control and the coarse-step stability log decide as one process does
(cycles, bias-check cosines, modes up to the switch to serial training) and log the same."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lpt.logging import read_run
from test_configs import lpt_train
from test_parallel_comm import mpirun

# a cosine threshold no one-shot gradient meets (measured: 0.99937 at step 3, 0.99998 at step 6): the check at step
# 3 tightens the tolerance, the one at step 6 switches to serial training (mode 2) for steps 7-12
ADAPTIVE = ["solver=mgrit", "solver.control=adaptive", "solver.control_every=3", "solver.control_min_cos=0.9999999",
            "solver.control_tightenings=1", "train.steps=12", "train.eval_every=6", "logging.log_every=1",
            "dataset.n_train=400", "dataset.n_val=100"]


@pytest.mark.slow(seconds=55)
def test_lpt_train_under_mpi_writes_one_log_and_decides_as_one_process(tmp_path):
    """One run covers both: its steps 1-3 are plain one-shot MGRIT (mode 0), then the control tightens the
    tolerance and switches to serial training, each under MPI as in one process."""
    single_dir, mpi_dir = tmp_path / "single", tmp_path / "mpi"
    proc = lpt_train([*ADAPTIVE, f"hydra.run.dir={single_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exe = Path(sys.executable).with_name("lpt-train")
    proc = mpirun(2, exe, *ADAPTIVE, "parallel=mpi", "parallel.layers=2", f"hydra.run.dir={mpi_dir}", timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("step 12/12") == 1, "only rank 0 prints"
    assert list(mpi_dir.rglob("*.h5")) == [mpi_dir / "run.h5"], "one rank writes the one log"
    single, mpi = read_run(single_dir), read_run(mpi_dir)
    assert list(mpi.attrs["grid"]) == [1, 2] and mpi.attrs["devices"].startswith("mpi")
    np.testing.assert_array_equal(single.mgrit["mode"], [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    for key in ("mode", "fwd_cycles", "bwd_cycles", "fallback"):
        np.testing.assert_array_equal(mpi.mgrit[key], single.mgrit[key], err_msg=key)
    checked = ~np.isnan(single.mgrit["grad_cos"])
    assert checked.sum() == 2  # no checks in serial mode
    np.testing.assert_array_equal(np.isnan(mpi.mgrit["grad_cos"]), ~checked)
    np.testing.assert_allclose(mpi.mgrit["grad_cos"][checked], single.mgrit["grad_cos"][checked], atol=1e-5)
    np.testing.assert_allclose(mpi.history["loss"], single.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(mpi.mgrit["fwd_residual"], single.mgrit["fwd_residual"], rtol=1e-4, equal_nan=True)
    np.testing.assert_allclose(mpi.mgrit["coarse_hrho"], single.mgrit["coarse_hrho"], rtol=1e-5, equal_nan=True)
