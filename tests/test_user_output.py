"""What a user sees while a run goes (lpt.train.progress) and input the loop refuses: the compilation line,
heartbeats in batch logs, the end-of-run summary, `status` from the start, resume with no steps left."""

from __future__ import annotations

import logging
import re
import time

import h5py
import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.train import ConfigError, run
from lpt.train.progress import RunProgress

SHORT = ["train.steps=6", "train.eval_every=3", "dataset.n_train=200", "dataset.n_val=50", "logging.progress=false"]


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lpt"]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        if record.name == "lpt":  # as _messages
            self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def mgrit_run(tmp_path_factory):
    """One layer-parallel run with adaptive control (so every mgrit/ dataset there is gets logged) and the lines
    the `lpt` logger wrote during it: (result, lines). The announcement, the summary and the datasets' descriptions
    are checked on this one run (it compiles the layer-parallel step once for both tests)."""
    logger, handler = logging.getLogger("lpt"), _Collect()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        result = run(compose_config([*SHORT, "solver=mgrit", "solver.control=adaptive"]),
                     tmp_path_factory.mktemp("mgrit") / "run")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, handler.messages


@pytest.mark.slow(seconds=45)
def test_a_run_announces_compilation_and_ends_with_a_summary(mgrit_run):
    result, lines = mgrit_run
    compiling = [i for i, m in enumerate(lines) if m.startswith("compiling the training step")]
    first = [i for i, m in enumerate(lines) if m.startswith("first step done in ")]
    assert len(compiling) == 1 and len(first) == 1 and compiling[0] < first[0]
    summary = [m for m in lines if m.startswith("finished steps 1-6 in ")]
    assert len(summary) == 1
    line = summary[0]
    assert f"val_acc {result.final['val_acc']:.4g}" in line and "rejected steps 0" in line
    assert "serial fallbacks 0 of 6 logged steps" in line and "mean MGRIT factors fwd " in line
    cycles = [float(np.mean(read_run(result.log_path).mgrit[f"{p}_cycles"])) for p in ("fwd", "bwd")]
    assert f"mean cycles fwd {cycles[0]:.3g} / adj {cycles[1]:.3g}" in line
    assert line.endswith(f"log {result.log_path}")


def test_rejected_steps_make_the_summary_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lpt"):
        run(compose_config([*SHORT, "train.inject_nan_at_step=2"]), tmp_path / "run")
    summary = [r for r in caplog.records if r.getMessage().startswith("finished steps")]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    assert "rejected steps 1" in summary[0].getMessage()


def test_heartbeat_lines_in_batch_logs(caplog, monkeypatch):
    """Without a bar, a line with step, loss, time per step and ETA once ``heartbeat_s`` has passed."""
    clock = iter([0.0, 10.0, 10.5, 11.0, 41.5, 42.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="lpt"):
        progress = RunProgress(total=100, start=0, bar=False, heartbeat_s=30.0)
        for done in range(1, 6):
            progress.step(done, {"loss": 0.25})
    lines = _messages(caplog)
    assert lines[1] == "first step done in 10.0 s (compilation included)"
    beats = [m for m in lines if m.startswith("step ")]
    # step 4 at t = 41.5: 31.5 s after the first step's end, 3 steps after it → 10.5 s/step, 96 steps left
    assert beats == ["step 4/100  loss 0.25  10.5 s/step  ETA 16:48"]


def test_compilation_is_announced_every_heartbeat_until_the_first_step(caplog):
    """No silence while the first step compiles: a line every ``heartbeat_s`` seconds, none after the first step."""
    with caplog.at_level(logging.INFO, logger="lpt"):
        progress = RunProgress(total=10, start=0, bar=False, heartbeat_s=0.05)
        time.sleep(0.4)
        progress.step(1, {"loss": 0.5})
        progress._beat.join(timeout=5)
        assert not progress._beat.is_alive()
        progress.close()
    lines = _messages(caplog)
    first = lines.index(next(m for m in lines if m.startswith("first step done in")))
    beat = re.compile(r"still compiling the training step \(0:00 so far\) \.\.\.")
    beats = [i for i, m in enumerate(lines) if beat.fullmatch(m)]
    # at most one line may race the first step's end; none comes later
    assert len(beats) >= 2 and all(i <= first + 1 for i in beats)
    assert lines[0].startswith("compiling the training step")


def test_status_is_running_from_the_start(tmp_path, monkeypatch):
    """A killed run's log says `running`: the status is written (and flushed) before the first step."""
    import lpt.train.loop as loop
    from lpt.logging import RunLog

    events = []
    set_attr, step = RunLog.set_attr, loop.RunProgress.step
    monkeypatch.setattr(RunLog, "set_attr", lambda self, key, value: (events.append((key, value)),
                                                                     set_attr(self, key, value))[1])
    monkeypatch.setattr(loop.RunProgress, "step", lambda self, done, *a: (events.append(("step", done)),
                                                                          step(self, done, *a))[1])
    run(compose_config(SHORT), tmp_path / "run")
    events = [e for e in events if e[0] in ("status", "step")]  # not the other attributes (depth, …)
    assert events[0] == ("status", "running") and events[1] == ("step", 1)
    assert events[-1] == ("status", "completed")
    with h5py.File(tmp_path / "run" / "run.h5", "r") as f:
        assert f.attrs["status"] == "completed"


def test_resume_with_no_steps_left_is_refused(tmp_path):
    run(compose_config(SHORT), tmp_path / "run")
    for steps in (6, 4):
        with pytest.raises(ConfigError, match=rf"the checkpoint in .* is at step 6, and train.steps={steps} asks for "
                                              r"no more; set train.steps above 6"):
            run(compose_config([*SHORT, f"train.steps={steps}", f"resume={tmp_path / 'run'}"]), tmp_path / "other")
    with pytest.raises(ConfigError, match=r"train.steps=0 must be an integer ≥ 1"):
        run(compose_config([*SHORT, "train.steps=0"]), tmp_path / "zero")


@pytest.mark.parametrize("override, message", [
    ("+trian.steps=2", "unknown top-level option(s) ['trian']; valid top-level keys are ['seed', "),
    ("+train.stpes=2", "train: unknown option(s) ['stpes']; valid keys are ['steps', "),
    ("+logging.every=2", "logging: unknown option(s) ['every']; valid keys are ['log_every', 'progress']"),
])
def test_keys_added_with_plus_that_nothing_reads_are_refused(tmp_path, override, message):
    """Hydra's `+` adds any key; a typo must not be ignored silently: one line, exit status 2, and no run
    directory left behind (Hydra creates it before the run is checked)."""
    from test_configs import lpt_train

    proc = lpt_train([override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"lpt-train: error: {message}")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "a refused invocation leaves no run directory"


@pytest.mark.parametrize("blocked", ["mpi4py", "mpi4jax"])
def test_parallel_mpi_without_the_mpi_packages_is_one_line(tmp_path, blocked):
    """parallel=mpi where mpi4py or mpi4jax cannot be imported (a stub that raises ImportError shadows it):
    one line naming the package and how to install it, exit status 2, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    stub = tmp_path / "stub" / blocked
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"raise ImportError('No module named {blocked}')\n")
    exe = Path(sys.executable).with_name("lpt-train")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub")}
    proc = subprocess.run([str(exe), "parallel=mpi", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lpt-train: error: parallel=mpi needs mpi4py and mpi4jax, and {blocked} cannot be "
                           f"imported (No module named {blocked}): pip install 'lpt[mpi]'")
    assert "Traceback" not in proc.stderr


def test_every_logged_dataset_is_described(mgrit_run):
    """Each history/ and mgrit/ dataset of a layer-parallel run (adaptive control: every entry there is) carries
    a `description` attribute, e.g. that time_s includes start-up."""
    result, _ = mgrit_run
    with h5py.File(result.log_path, "r") as f:
        names = [f"{g}/{k}" for g in ("history", "mgrit") for k in f[g]]
        assert len(names) > 30
        missing = [n for n in names if not f[n].attrs.get("description")]
        assert not missing, missing
        assert "compilation included" in f["history/time_s"].attrs["description"]
        assert f["mgrit/bwd_factor"].attrs["description"].startswith("adjoint solve: convergence factor")


class _Attrs:
    def __init__(self):
        self.attrs = {}

    def set_attr(self, key, value):
        self.attrs[key] = value


@pytest.mark.parametrize("depth, padded, level", [(1024, 1024, logging.INFO), (1100, 1100, logging.INFO),
                                                  (13, 16, logging.WARNING), (70, 72, logging.WARNING)])
def test_the_header_states_the_real_and_the_padded_depth(depth, padded, level, caplog):
    """MGRIT pads the fine level to whole intervals and each coarse level to its own where a serial tail would cost
    more (70 → 72; 1100 with cfactor 4 is already whole); the run says by how much (a warning with the nearest
    depths that need no padding when the levels' padding costs more than 5 %) and the log keeps both depths."""
    from lpt.train.checks import report_padding
    from lpt.train.solver import make_solver

    cfg = compose_config(["solver=mgrit", "solver.cfactor=4"] if depth == 1100 else ["solver=mgrit"])
    solver = make_solver(cfg["solver"], full_batch=True)
    log = _Attrs()
    with caplog.at_level(logging.INFO, logger="lpt"):
        report_padding(solver, depth, log)
    assert log.attrs == {"depth": depth, "padded_depth": padded, "serial_tail": 0}
    (record,) = [r for r in caplog.records if "pads depth" in r.getMessage()]
    assert record.levelno == level
    layout = solver.layouts(depth)[0]
    assert f"pads depth {depth} to {padded} layer steps ({padded - depth} identity steps; " \
           f"{100 * layout.extra_work:.2g} % more work" in record.getMessage()
    assert (layout.extra_work > 0.05) == (level == logging.WARNING)
    if level == logging.WARNING:
        # every level's size n_ℓ = ⌈n_{ℓ−1}/m⌉ a multiple of m: no identity step anywhere
        def unpadded(d):
            return all(s.n % s.m == 0 for s in solver.layouts(d)[0].shapes if s.m) and solver.layouts(d)[0].n_pad == d

        below = max(d for d in range(1, depth) if unpadded(d))
        above = min(d for d in range(depth + 1, 4 * depth) if unpadded(d))
        assert record.getMessage().endswith(f"depth {below} or {above} needs none")


@pytest.mark.parametrize("depth, tail", [(1025, 1), (65, 1), (1027, 3), (37, 5), (130, 2)])
def test_the_header_states_the_serial_tail(depth, tail, caplog):
    """Where the last r layers are cheaper serially than the padding (1025 = 1024 + 1 with cfactor 4), the run
    says that MGRIT solves the first N − r layers (no identity steps) and the last r serially; the log keeps
    ``serial_tail`` = r and ``padded_depth`` = N (the steps done)."""
    from lpt.train.checks import report_padding
    from lpt.train.solver import make_solver

    solver = make_solver(compose_config(["solver=mgrit"])["solver"], full_batch=True)
    log = _Attrs()
    with caplog.at_level(logging.INFO, logger="lpt"):
        report_padding(solver, depth, log)
    assert log.attrs == {"depth": depth, "padded_depth": depth, "serial_tail": tail}
    (record,) = [r for r in caplog.records if "serially" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"MGRIT solves the first {depth - tail} of {depth} layers and the last {tail} serially after them (about "
        f"{3 * tail} layer steps per gradient, not per cycle), so that every level of the hierarchy holds whole "
        f"intervals without identity steps")
    assert solver.layouts(depth)[0].n_pad == depth - tail


@pytest.mark.parametrize("depth, layers, level, near", [(1025, 4, logging.INFO, None),
                                                        (1024, 4, logging.INFO, None),
                                                        (1025, 8, logging.INFO, None),
                                                        (70, 4, logging.WARNING, (64, 128))])
def test_the_header_states_what_the_uneven_chunks_cost(depth, layers, level, near, caplog):
    """On layer chunks the header also says how many steps the largest chunk relaxes per sweep and how much more
    that is than the real steps split evenly (N = 70 on 4 chunks: 45 % more): a warning above 5 %, with the
    nearest depths that split evenly on this grid. N = 1025 splits as 1024 with its serial tail of 1: 0 % more
    (it was 5.2 % on 4 chunks and 9.2 % on 8 with the padding)."""
    import dataclasses

    from lpt.parallel.comm import SingleComm
    from lpt.train.checks import report_padding
    from lpt.train.solver import make_solver

    solver = make_solver(compose_config(["solver=mgrit"])["solver"], full_batch=True)
    solver = dataclasses.replace(solver, comm=SingleComm(layers=layers))
    with caplog.at_level(logging.INFO, logger="lpt"):
        report_padding(solver, depth, _Attrs())
    (record,) = [r for r in caplog.records if "MGRIT" in r.getMessage()]
    layout = solver.layouts(depth)[0]
    assert record.levelno == level and (layout.extra_work_per_chunk > 0.05) == (level == logging.WARNING)
    assert (layout.tail, layout.extra_work_per_chunk == 0) == ((1, True) if depth == 1025 else (0, near is None))
    assert (f"{layers} layer chunks of {layout.stride} layers (the last {layout.last_rows}), {layout.n_local} steps "
            f"each with identity steps: the largest chunk relaxes {layout.work} steps per sweep of all levels, "
            f"{100 * layout.extra_work_per_chunk:.2g} % more than the real steps split evenly") in record.getMessage()
    if near:
        assert record.getMessage().endswith(f"depth {near[0]} or {near[1]} needs none on {layers} layer chunks")
        assert all(solver.layouts(d)[0].extra_work_per_chunk == 0 for d in near)
        # (depths with a serial tail, 65 = 64 + 1 among them, split evenly too, but are not named: they need one)
        assert not any(solver.layouts(d)[0].extra_work_per_chunk == 0 and solver.layouts(d)[0].tail == 0
                       for d in range(near[0] + 1, near[1]))
