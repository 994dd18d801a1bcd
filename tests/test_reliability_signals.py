"""Interruptions and files: SIGTERM/SIGINT to a real ``lpt-train`` → checkpoint, clean HDF5, exit 128 + signal,
bitwise resume (by ``resume=PATH`` and by a SLURM requeue); SIGKILL at random moments leaves a readable log
and a loadable checkpoint; one writer per run directory.

The runs that are compared bit for bit all run as ``lpt-train`` subprocesses: the test process enables
float64 (conftest), which changes float32 rounding in places, so in-process runs are not the reference.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import RunDirLock, read_run
from lpt.train import ConfigError, run
from lpt.train.signals import StopRequest

EXE = Path(sys.executable).with_name("lpt-train")
STEPS = 600
ARGS = ["dataset.n_train=100", "dataset.n_val=50", "model.depth=4", "train.eval_every=50",
        "train.checkpoint_every=25", "logging.progress=false", f"train.steps={STEPS}"]
COMPARED = ("loss", "objective", "grad_norm", "train_acc", "val_acc", "lr")


def start(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(EXE), *ARGS, *extra, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Exit status and the output (stdout, where Hydra's log goes, then stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"lpt-train ended before {path.name} appeared: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.005)


def checkpoint_step(run_dir: Path) -> int:
    with np.load(run_dir / "checkpoint.npz") as ckpt:
        return int(ckpt["meta_step"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """The uninterrupted run's history."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start(run_dir))
    assert code == 0, err[-3000:]
    return read_run(run_dir).history


def assert_same_history(history: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(history["step"], np.arange(1, STEPS + 1))
    for key in COMPARED:
        np.testing.assert_array_equal(history[key], reference[key], err_msg=key)


@pytest.mark.slow(seconds=17)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_closes_the_log_and_resume_is_bitwise(tmp_path, reference, sig):
    """SIGTERM (then resume=PATH) and SIGINT (then a SLURM requeue into the same run directory)."""
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for(run_dir / "checkpoint.npz", proc)  # mid-run: the first checkpoint (step 25) is written
    sent = time.perf_counter()
    proc.send_signal(sig)
    code, err = finish(proc, timeout=60)
    seconds = time.perf_counter() - sent
    name = signal.Signals(sig).name
    assert code == 128 + sig, err[-3000:]
    step = checkpoint_step(run_dir)
    assert 25 <= step < STEPS, f"the signal arrived too late to test anything (step {step})"
    assert f"lpt-train: interrupted by {name} after step {step}; checkpoint written to" in err
    assert "Traceback" not in err
    rec = read_run(run_dir)  # closed cleanly: readable, status set, every completed step logged
    assert rec.attrs["status"] == f"interrupted: {name}"
    np.testing.assert_array_equal(rec.history["step"], np.arange(1, step + 1))
    print(f"{name}: exit {code} {seconds:.2f} s after the signal, at step {step}")

    if sig == signal.SIGTERM:
        again = start(tmp_path / "elsewhere", f"resume={run_dir}")
    else:  # requeued SLURM job: same command, same run directory, SLURM_RESTART_COUNT > 0
        again = start(run_dir, env={"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"})
    code, err = finish(again)
    assert code == 0, err[-3000:]
    rec = read_run(run_dir)
    assert rec.attrs["status"] == "completed" and rec.attrs["resumed"] == 1
    assert f"resuming {run_dir} from step {step}" in err
    assert_same_history(rec.history, reference)


@pytest.mark.slow(seconds=17)
def test_sigkill_at_random_moments_leaves_readable_logs_and_checkpoints(tmp_path, reference):
    """Four runs killed with SIGKILL at random moments (during start-up, compilation, training: two of them);
    every log that exists is readable and holds a prefix of the history; every checkpoint loads; the run
    killed last is resumed and ends bit for bit like the uninterrupted run."""
    seed = int(os.environ.get("LPT_KILL_SEED", time.time_ns() % 2**32))
    print(f"kill moments drawn with LPT_KILL_SEED={seed}")
    rng = random.Random(seed)
    killed: list[tuple[Path, float]] = []
    for i in range(4):
        run_dir = tmp_path / f"run{i}"
        proc = start(run_dir)
        if i == 0:  # somewhere in start-up: imports, data loading
            time.sleep(rng.uniform(0.2, 2.5))
        elif i == 1:  # after the log was created: compilation, first steps
            wait_for(run_dir / "run.h5", proc)
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # while training, rows and checkpoints being written
            wait_for(run_dir / "checkpoint.npz", proc)
            time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        killed.append(run_dir)
        log, ckpt = run_dir / "run.h5", run_dir / "checkpoint.npz"
        if not log.exists():
            assert not ckpt.exists()
            continue
        history = read_run(log).history
        n = len(history.get("step", []))
        assert all(len(v) == n for v in history.values()), {k: len(v) for k, v in history.items()}
        np.testing.assert_array_equal(history.get("step", np.zeros(0)), np.arange(1, n + 1))
        for key in ("loss", "grad_norm"):
            if n:
                np.testing.assert_array_equal(history[key], reference[key][:n], err_msg=key)
        if ckpt.exists():
            with np.load(ckpt) as data:
                arrays = {k: data[k] for k in data.files}
            step = int(arrays["meta_step"])
            assert step % 25 == 0 and step <= n, (step, n)
    resumable = [d for d in killed if (d / "checkpoint.npz").exists()]
    assert resumable, "no run lived long enough to write a checkpoint"
    code, err = finish(start(resumable[-1], "resume=auto"))
    assert code == 0, err[-3000:]
    assert_same_history(read_run(resumable[-1]).history, reference)


def test_two_runs_never_share_a_run_directory(tmp_path):
    cfg = compose_config(["dataset.n_train=50", "dataset.n_val=20", "model.depth=2", "train.steps=2"])
    with RunDirLock(tmp_path):  # as if another lpt-train were writing there
        with pytest.raises(ConfigError, match=r"run directory .* is in use by pid \d+ on "):
            run(cfg, tmp_path)
    assert not (tmp_path / "run.h5").exists()
    run(cfg, tmp_path)  # the lock went with its holder
    assert read_run(tmp_path).attrs["status"] == "completed"


def test_resume_auto_continues_the_run_directory_or_starts_afresh(tmp_path):
    base = ["dataset.n_train=50", "dataset.n_val=20", "model.depth=2", "train.checkpoint_every=3"]
    first = run(compose_config([*base, "train.steps=3", "resume=auto"]), tmp_path)  # nothing there: a fresh run
    assert read_run(first.log_path).attrs.get("resumed") is None
    run(compose_config([*base, "train.steps=5", "resume=auto"]), tmp_path)
    rec = read_run(tmp_path)
    assert rec.attrs["resumed"] == 1
    np.testing.assert_array_equal(rec.history["step"], np.arange(1, 6))
    # a log destroyed on disk does not block resuming: it is kept aside and a new log continues
    (tmp_path / "run.h5").write_bytes(b"not an HDF5 file")
    run(compose_config([*base, "train.steps=7", "resume=auto"]), tmp_path)
    assert (tmp_path / "run.h5.unreadable").read_bytes() == b"not an HDF5 file"
    np.testing.assert_array_equal(read_run(tmp_path).history["step"], [6, 7])


def test_a_second_signal_goes_to_the_previous_handler():
    """First signal: a flag for the loop. Second: the handler that was there before (here a recorder; by
    default SIGTERM's ends the process and SIGINT's raises KeyboardInterrupt)."""
    seen = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        stop = StopRequest()
        signal.raise_signal(signal.SIGUSR1)
        assert stop.requested and stop.name == "SIGUSR1" and stop.should_stop() and seen == []
        signal.raise_signal(signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
        signal.raise_signal(signal.SIGUSR1)  # the previous handler is back for good
        assert seen == [signal.SIGUSR1] * 2
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_signal_during_the_agreement_counts_at_the_next_one_on_every_process():
    """Several processes agree on stopping by a collective (the largest signal number any received). A signal
    that reaches one process while it is inside that collective must not stop it alone: the others were told 0
    and go on (before: this process stopped and waited for ever in the checkpoint's gather, 2 of 5 runs of
    ``tests/test_mpi_resume.py``'s SIGTERM test hung). It stops at the next agreement, with the others."""
    others = []  # what the other processes (all without a signal) get from each agreement

    def agree(local):
        agreed = max(local, 0)
        if not others:  # the signal lands during the first collective, after this process sent its 0
            stop._handle(signal.SIGTERM, None)
        others.append(agreed)
        return agreed

    stop = StopRequest(signals=(), agree=agree)
    assert not stop.should_stop() and stop.requested  # the collective said 0: every process goes on
    assert stop.should_stop() and others == [0, signal.SIGTERM]  # the next one stops them all
