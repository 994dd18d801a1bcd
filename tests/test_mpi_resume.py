"""Resume under MPI keeps the warm start (issue 13): the checkpoint holds the warm-start states of every layer
rank (gathered to rank 0 as the mesh lays them out) and the layer parameters and Adam moments of every rank's
chunk (the sharded MPI layout), and each rank takes its blocks back on resume, so a 2-rank run resumed from where
SIGTERM to one rank stopped it ends with the uninterrupted history bit for bit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpt.logging import read_run
from test_multiprocess_mesh import logged_rows
from conftest import child_xla_flags

EXE = str(Path(sys.executable).with_name("lpt-train"))
RUN = ["solver=mgrit", "model.depth=16", "dtype=float64", "logging.progress=false", "train.eval_every=3",
       "parallel=mpi", "parallel.layers=2"]


def _command(*args: str) -> tuple[list[str], dict]:
    """``mpirun -np 2 lpt-train`` with the run's options and ``args``, and its environment (one device per rank)."""
    pytest.importorskip("mpi4jax", reason="parallel=mpi needs mpi4jax: pip install '.[mpi]'")
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    env["XLA_FLAGS"] = child_xla_flags()
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", EXE, *RUN, *args], env


def _mpirun(*args: str) -> subprocess.CompletedProcess:
    cmd, env = _command(*args)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# 150 steps of about 0.01 s: SIGTERM lands 0.2-0.3 s after the first logged row (step 13-17 here), well before the end
STEPS = 150
STOP = [f"train.steps={STEPS}", "train.eval_every=50", "logging.log_every=1", "dataset.n_train=200", "dataset.n_val=50"]
KEYS = ("loss", "objective", "grad_norm", "lr", "train_acc", "val_acc")


@pytest.mark.slow(seconds=120)
def test_sigterm_to_one_rank_of_the_sharded_layout_stops_both_and_the_resumed_run_continues_bit_for_bit(tmp_path):
    """``mpirun -np 2 lpt-train parallel=mpi parallel.layers=2`` at depth 13: chunks of 8 and 5 layers (arrays of 8
    steps; rank 0 holds 8 real layers and their Adam moments, rank 1 holds 5): SIGTERM to rank 1 once the log has a
    row; the ranks agree, finish the same step, rank 0 writes the gathered checkpoint (all the real layers) and
    ``status`` "interrupted: SIGTERM"; resumed, the run ends with the uninterrupted history bit for bit.

    The checkpoint holds both chunks' warm-start states with their halo points (2 × (8 + 1) rows), none left at
    zero, and the resumed run's MGRIT residuals equal the uninterrupted run's: the warm start is kept.

    One depth: the padded layout runs every code path of an even one (rank 0's chunk is full) plus the padding."""
    depth = 13
    args = [*STOP, f"model.depth={depth}"]
    whole = _mpirun(*args, f"hydra.run.dir={tmp_path / 'whole'}")
    assert "split over the 2 layer ranks (8 + 5 layers; identity steps up to 8" in whole.stdout + whole.stderr
    path = tmp_path / "stopped"
    cmd, env = _command(*args, f"hydra.run.dir={path}")
    with open(tmp_path / "stopped.out", "w+") as out:
        proc, ranks = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True), []
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and logged_rows(path / "run.h5") < 1:
                time.sleep(0.2)
            ranks = [_rank_pid(proc.pid, rank) for rank in (0, 1)]
            os.kill(ranks[1], signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                pytest.fail("the ranks did not end within 120 s of SIGTERM to rank 1 (they disagreed on the stop?)")
        finally:
            if proc.poll() is None:
                for pid in ranks:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait()
        out.seek(0)
        output = out.read()
    assert proc.returncode != 0, output[-3000:]  # both ranks exit 128 + 15
    assert "interrupted by SIGTERM after step" in output, output[-3000:]
    stopped = read_run(path)
    assert stopped.attrs["status"] == "interrupted: SIGTERM", output[-3000:]
    print(f"depth {depth}: stopped after step {len(stopped.history['step'])}")
    assert 1 <= len(stopped.history["step"]) < STEPS
    with np.load(path / "checkpoint.npz") as ckpt:
        names = list(ckpt["names"])
        assert ckpt[f"leaf_{names.index('params.layers.K'):05d}"].shape[0] == depth
        ys = ckpt[f"leaf_{names.index('solver_state.ys'):05d}"]
    assert ys.shape[0] == 2 * (8 + 1) and np.all(np.abs(ys).reshape(ys.shape[0], -1).max(axis=1) > 0)
    _mpirun(*args, f"resume={path}")
    a, b = read_run(tmp_path / "whole").history, read_run(path).history
    np.testing.assert_array_equal(b["step"], np.arange(1, STEPS + 1))
    for key in KEYS:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    assert read_run(path).attrs["status"] == "completed"
    ma, mb = read_run(tmp_path / "whole").mgrit, read_run(path).mgrit
    np.testing.assert_array_equal(mb["fwd_residual"], ma["fwd_residual"])


def _rank_pid(root: int, rank: int) -> int:
    """The process id of MPI rank ``rank`` among the descendants of process ``root`` (by its
    ``OMPI_COMM_WORLD_RANK``; Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return pid
        todo.extend(children.get(pid, []))
    raise AssertionError(f"no MPI rank {rank} under process {root}")
