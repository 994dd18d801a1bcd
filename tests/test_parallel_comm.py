"""The communication back-ends implement the same collectives (mesh in-process, MPI under mpirun)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lpt.parallel.comm import SingleComm
from lpt.parallel.grid import GridError, ProcessorGrid
from conftest import child_xla_flags

HERE = Path(__file__).resolve().parent


def expected(blocks: np.ndarray, boundary: np.ndarray, reverse: bool) -> np.ndarray:
    """Reference: chunk p receives chunk p∓1's block; the end chunk receives the boundary."""
    out = np.empty_like(blocks)
    n = blocks.shape[1]
    for p in range(n):
        src = p + 1 if reverse else p - 1
        out[:, p] = boundary if not 0 <= src < n else blocks[:, src]
    return out


@pytest.mark.parametrize("data,layers", [(1, 4), (2, 4), (4, 2), (2, 2)])
def test_mesh_collectives(data, layers):
    grid = ProcessorGrid("mesh", data=data, layers=layers)
    comm = grid.comm()
    mesh = grid.mesh()
    x = jnp.arange(data * layers * 3, dtype=jnp.float64).reshape(data, layers, 3) + 1
    boundary = jnp.full((3,), -7.0)

    def body(xb):
        xb = xb[0, 0]
        return (comm.shift(xb, boundary)[None, None], comm.shift(xb, boundary, reverse=True)[None, None],
                comm.layer_sum(xb)[None, None], comm.layer_gather(xb[None])[None, None], comm.data_sum(xb)[None, None])

    spec = P("data", "layers")
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=(spec,) * 5))
    fwd, bwd, lsum, gathered, dsum = f(x)
    xn = np.asarray(x)
    np.testing.assert_array_equal(fwd, expected(xn, -7.0, False))
    np.testing.assert_array_equal(bwd, expected(xn, -7.0, True))
    np.testing.assert_array_equal(lsum, np.broadcast_to(xn.sum(1, keepdims=True), xn.shape))
    np.testing.assert_array_equal(gathered[:, 0], xn)  # every chunk holds all chunks of its data row
    np.testing.assert_array_equal(dsum, np.broadcast_to(xn.sum(0, keepdims=True), xn.shape))


def test_single_comm_is_identity():
    c = SingleComm()
    x, b = jnp.ones(3), jnp.zeros(3)
    assert c.shift(x, b) is b and c.layer_sum(x) is x and c.layer_gather(x) is x and c.data_sum(x) is x


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="single", layers=2), r"parallel.data × parallel.layers must be 1 × 1"),
    (dict(backend="mesh", layers=0), r"parallel.layers=0 must be a positive integer"),
    (dict(backend="gpu"), r"parallel.name='gpu' is not valid; choose one of"),
])
def test_invalid_grids(kwargs, match):
    with pytest.raises(GridError, match=match):
        ProcessorGrid(**kwargs)


def test_mesh_grid_must_match_devices():
    with pytest.raises(GridError, match=r"3 × 4 = 12 needs 12 devices, only 8 are visible"):
        ProcessorGrid("mesh", data=3, layers=4).check_resources()
    ProcessorGrid("mesh", data=3, layers=2).check_resources()  # a subset of the devices is fine


def require_mpi4jax() -> None:
    """MPI tests skip (with the reason) only outside CI; in CI (CI=true), which installs OpenMPI and the mpi
    extra, a missing mpi4jax fails. (Do not import mpi4jax here: that would initialise MPI in the test process
    and break the child mpirun.)"""
    if importlib.util.find_spec("mpi4jax") is None or shutil.which("mpirun") is None:
        reason = "MPI tests need OpenMPI (mpirun) and the mpi extra: pip install '.[mpi]'"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def mpirun(np_: int, script: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``script`` with this interpreter under mpirun (as root in CI: --allow-run-as-root)."""
    require_mpi4jax()
    cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", str(np_), sys.executable,
           str(script), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    env["XLA_FLAGS"] = child_xla_flags()  # one device per rank
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("ranks,data", [(2, 1), (4, 2)])
def test_mpi_collectives(ranks, data):
    require_mpi4jax()
    proc = mpirun(ranks, HERE / "mpi" / "comm_check.py", str(data))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok") == ranks, proc.stdout[-2000:]
