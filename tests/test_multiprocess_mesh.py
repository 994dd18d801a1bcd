"""``parallel=mesh`` across JAX processes (``parallel.processes``; issue 13, item 5): two ``lpt-train`` processes
on localhost (one CPU device each, collectives over gloo) at an uneven depth, started with an explicit coordinator
or by ``mpirun`` (detected), give the single-process iterates and final state to 1e-12 (float64) and write one
log and checkpoint; a stop signal to one process stops both after the same step, and the resumed run continues
bit for bit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpt.logging import read_run
from conftest import child_xla_flags
from test_mesh_uneven import checkpoint

EXE = str(Path(sys.executable).with_name("lpt-train"))
# N = 17 on 2 layer chunks: the solver's chunks of 16 and 1 layers, 16 rows each on its process's device (an uneven
# depth runs every code path of an even one, plus the zero rows)
RUN = ["solver=mgrit", "model.depth=17", "dtype=float64", "train.steps=6", "train.eval_every=3",
       "logging.progress=false"]
MESH = ["parallel=mesh", "parallel.layers=2", "parallel.processes=2"]
KEYS = ("loss", "objective", "grad_norm", "train_acc", "val_acc")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    env["XLA_FLAGS"] = child_xla_flags("--xla_force_host_platform_device_count=1")  # one device per process
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(run_dir: Path, *extra: str) -> list[subprocess.Popen]:
    port = _port()
    return [subprocess.Popen([EXE, *RUN, *MESH, f"parallel.coordinator=localhost:{port}", f"parallel.process_id={i}",
                              f"hydra.run.dir={run_dir}", *extra], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 400) -> list[tuple[int, str]]:
    return [(p.wait(timeout), p.stdout.read()) for p in procs]


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("single")
    proc = subprocess.run([EXE, *RUN, f"hydra.run.dir={path}"], env=_env(), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    path = tmp_path_factory.mktemp("two")
    results = _finish(_start(path))
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    return path, results


@pytest.mark.slow(seconds=120)
def test_two_processes_with_a_coordinator_give_the_single_process_iterates(single_dir, two):
    """The history to 1e-12 and the MGRIT residuals to 1e-8, one log written by process 0, and the final
    parameters and optimiser state to 1e-12 (float64), at N = 17 on 2 chunks (16 + 1 layers)."""
    path, results = two
    rec, single = read_run(path), read_run(single_dir)
    assert tuple(rec.attrs["grid"]) == (1, 2)
    np.testing.assert_array_equal(rec.history["step"], single.history["step"])  # one log, one row per step
    for key in KEYS:
        np.testing.assert_allclose(rec.history[key], single.history[key], rtol=1e-12, atol=1e-14, err_msg=key)
    for key in ("fwd_residual", "bwd_residual"):
        np.testing.assert_allclose(rec.mgrit[key], single.mgrit[key], rtol=1e-8, atol=1e-13, err_msg=key)
    assert "finished steps 1-6" in results[0][1] and "finished steps" not in results[1][1]  # process 0 reports
    assert sorted(p.name for p in path.glob("*.h5")) == ["run.h5"]
    # the checkpoint, gathered from both processes: the 17 real layers, equal to the single process's
    ckpt, ref = checkpoint(path), checkpoint(single_dir)
    assert ckpt["params.layers.K"].shape[0] == 17
    for name, value in ref.items():
        if name.startswith(("params", "opt_state")):
            np.testing.assert_allclose(ckpt[name], value, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.slow(seconds=90)
def test_mpirun_starts_the_processes_without_a_coordinator(single_dir, tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "XLA_FLAGS", EXE,
                           *RUN, *MESH, f"hydra.run.dir={tmp_path}"], env=_env(), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h, single = read_run(tmp_path).history, read_run(single_dir).history
    for key in KEYS:
        np.testing.assert_allclose(h[key], single[key], rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.slow(seconds=150)
def test_a_signal_to_one_process_stops_both_and_the_resumed_run_continues_bit_for_bit(two, tmp_path):
    """SIGTERM to process 1 only: the processes agree at the next logged row (every step here), both exit 143
    after the same step, and two processes resumed from the checkpoint end with the uninterrupted history bit for
    bit, all started with a coordinator (a resumed run started by ``mpirun`` instead ended 1e-16 apart from the
    coordinator's run in one step's gradient norm, in one run of the suite: close, not bit for bit)."""
    path = tmp_path / "run"
    procs = _start(path, "logging.log_every=1")
    log = path / "run.h5"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and logged_rows(log) >= 1):
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    results = _finish(procs)
    assert [rc for rc, _ in results] == [143, 143], results[0][1][-2000:] + results[1][1][-2000:]
    stopped = read_run(path)
    assert stopped.attrs["status"] == "interrupted: SIGTERM" and len(stopped.history["step"]) < 6
    resumed = _finish(_start(path, "logging.log_every=1", f"resume={path}"))
    assert [rc for rc, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    a, b = read_run(two[0]).history, read_run(path).history
    np.testing.assert_array_equal(b["step"], np.arange(1, 7))
    for key in KEYS:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


@pytest.mark.slow(seconds=60)
def test_an_error_on_one_process_ends_both_with_the_error_shown(tmp_path):
    """Process 1 raises at step 3, after the collectives of steps 1-2: it prints the error and leaves without
    JAX's shutdown barrier; process 0, waiting in a collective, fails on the closed connection and ends too (at
    the latest when the coordination service misses process 1's heartbeat, 10 s here). Before, process 1 sat in
    the shutdown barrier and both hung until its 300 s timeout."""
    procs = _start(tmp_path / "run", "train.inject_error_at_step=3", "parallel.heartbeat_s=10")
    ended = [None, None]
    deadline = time.time() + 300
    while time.time() < deadline and None in ended:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    out = [p.stdout.read() for p in procs]
    assert None not in ended, "a process was still running 300 s after the start:\n" + out[0][-2000:]
    assert procs[0].returncode != 0 and procs[1].returncode == 1, out[1][-2000:]
    assert "lpt: process 1 of 2: RuntimeError: injected fault at step 3" in out[1], out[1][-2000:]
    assert "Traceback" in out[1] and "ending all processes" in out[1]
    print(f"process 0 ended {ended[0] - ended[1]:.1f} s after process 1")
    assert ended[0] - ended[1] < 60


def logged_rows(log: Path) -> int:
    """Rows in the run log so far (0 while it is being written or not there yet)."""
    try:
        return len(read_run(log).history["step"])
    except Exception:  # noqa: BLE001 - the file is being written
        return 0


@pytest.mark.parametrize("overrides, message", [
    (["parallel=mpi", "+parallel.processes=2"], "parallel.processes=2 starts JAX's multi-process runtime, which needs "
                                               "parallel=mesh (one global mesh); parallel=mpi runs one process per "
                                               "MPI rank"),
    (["parallel=mesh", "parallel.processes=0"], "parallel.processes=0 must be a positive integer"),
    (["parallel=mesh", "parallel.processes=2", "parallel.coordinator=node001"],
     "parallel.coordinator='node001' must be host:port of process 0"),
    (["parallel=mesh", "parallel.processes=2", "parallel.process_id=2"],
     "parallel.process_id=2 must be an integer in [0, 1] (parallel.processes=2)"),
    (["parallel=mesh", "parallel.heartbeat_s=0"], "parallel.heartbeat_s=0 must be a positive integer (seconds)"),
])
def test_bad_process_options_are_refused_in_one_line(overrides, message, tmp_path):
    from lpt.cli.compose import compose_config
    from lpt.train import ConfigError, run

    with pytest.raises(ConfigError) as err:
        run(compose_config(["solver=mgrit", *overrides]), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
