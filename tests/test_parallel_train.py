"""Training on the distributed back-ends: MPI iterates, training on a device mesh, grids (`lpt-train` under
mpirun: tests/test_control_mpi.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.train import ConfigError, run
from test_parallel_comm import mpirun

HERE = Path(__file__).resolve().parent
SHORT = ["solver=mgrit", "train.steps=12", "train.eval_every=6", "dataset.n_train=400", "dataset.n_val=100"]


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("ranks,data,depth,layer", [(2, 1, 100, "conv"), (4, 2, 100, "dense")])
def test_mpi_iterates_equal_single(ranks, data, depth, layer):
    """Each rank compares its chunk's forward/adjoint states, objective, gradient, residuals (float64, 1e-12).

    N = 100 on 2 layer ranks: uneven chunks of 48 and 52 layers in arrays of 52 steps (rank 0's last 4 identity);
    the layout itself is the solver's, the same on every back-end, and even chunks (N = 64) on the mesh are checked
    in tests/test_parallel_mgrit.py. Rank 0 computes the single-device reference while the others wait asleep."""
    proc = mpirun(ranks, HERE / "mpi" / "iterates_check.py", str(data), str(depth), layer, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok") == ranks


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The single-device reference, in-process (as the mesh runs)."""
    path = tmp_path_factory.mktemp("single")
    run(compose_config(SHORT), path)
    return read_run(path)


@pytest.mark.slow(seconds=24)
@pytest.mark.parametrize("data,layers", [(1, 4), (2, 2)])
def test_mesh_training_equals_single(tmp_path, single_run, data, layers):
    result = run(compose_config([*SHORT, "parallel=mesh", f"parallel.data={data}", f"parallel.layers={layers}"]),
                 tmp_path)
    rec = read_run(result.log_path)
    np.testing.assert_allclose(rec.history["loss"], single_run.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(rec.history["val_acc"], single_run.history["val_acc"])
    assert list(rec.attrs["grid"]) == [data, layers]


@pytest.mark.parametrize("overrides, message", [
    (["parallel=mesh", "parallel.layers=4", "solver=serial"], "needs the layer-parallel solver: set solver=mgrit"),
    (["parallel=mesh", "parallel.layers=8", "model.depth=16"], "parallel.layers=8 is more than the finest MGRIT"),
    (["parallel=mesh", "parallel.data=3", "parallel.layers=1"], "must divide evenly among parallel.data=3"),
    (["parallel=mesh", "parallel.data=4", "parallel.layers=4"], "needs 16 devices, only 8 are visible"),
    (["parallel=mesh", "parallel.data=2", "optimizer=lbfgs"], "optimizer=lbfgs is not available with data-parallel"),
    (["parallel=mpi", "parallel.layers=2"], "must equal the 1 MPI ranks"),
])
def test_invalid_grids_are_refused_before_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_config(["solver=mgrit", "train.steps=1", "dataset.n_train=400", *overrides]), tmp_path)
    assert not (tmp_path / "run.h5").exists()
