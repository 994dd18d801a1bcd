"""The summary a Hydra multirun writes into its sweep directory (lpt/cli/sweep.py, ``hydra.callbacks``)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lpt.cli.sweep import SweepSummary
from test_configs import lpt_train

TINY = ["train.steps=3", "dataset.n_train=100", "dataset.n_val=50", "model.depth=8"]
SHARED = " ".join(TINY)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One real two-job multirun of the installed console script (basic launcher): (process, sweep directory)."""
    tmp = tmp_path_factory.mktemp("multirun")
    sweep_dir = tmp / "sweep"
    proc = lpt_train(["-m", "solver=serial,mgrit", *TINY, f"hydra.sweep.dir={sweep_dir}"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, sweep_dir


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def sweep_config(sweep_dir: Path):
    """The part of a multirun's config the callback reads."""
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "output_subdir": ".hydra"}})


def copy_of(sweep_dir: Path, dest: Path) -> Path:
    """The sweep's job directories (no report) in ``dest``."""
    shutil.copytree(sweep_dir, dest, ignore=shutil.ignore_patterns("report"))
    return dest


def add_job(sweep_dir: Path, name: str, overrides: list[str], log: bytes | None = None) -> None:
    """A job directory as Hydra leaves it, with ``log`` as its run.h5 (None: the job wrote none)."""
    hydra_dir = sweep_dir / name / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if log is not None:
        (sweep_dir / name / "run.h5").write_bytes(log)


def test_multirun_writes_summary_of_all_jobs(sweep):
    proc, sweep_dir = sweep
    out = sweep_dir / "report"
    assert [p.parent.name for p in sorted(sweep_dir.glob("*/run.h5"))] == ["0", "1"]
    lines = [line for line in proc.stdout.splitlines() if "sweep summary" in line]
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith(f"lpt-train: sweep summary of 2 runs in {out} (summary.md, summary.csv, loss.png")
    rows = csv_rows(out / "summary.csv")
    assert [(r["run"], r["solver"], r["depth"], r["steps"]) for r in rows] == [
        ("solver=serial", "serial", "8", "3"), ("solver=mgrit", "mgrit", "8", "3")]
    assert all(0.0 <= float(r["final_val_acc"]) <= 1.0 for r in rows)
    md = (out / "summary.md").read_text()
    assert md.startswith(f"# Run summary: {SHARED}\n")  # overrides shared by all jobs: the title
    assert "| solver=serial | peaks | 8 | serial | 1x1 | 3 |" in md
    assert "| solver=mgrit | peaks | 8 | mgrit | 1x1 | 3 |" in md
    for name in ("loss.png", "accuracy.png", "residuals.png"):
        assert (out / name).stat().st_size > 1000, name


def test_single_run_writes_no_sweep_summary(tmp_path):
    proc = lpt_train([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "run.h5").is_file()
    assert "sweep summary" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert not (tmp_path / "run" / "report").exists()


def test_job_without_log_is_skipped_and_counted(sweep, tmp_path, capsys):
    sweep_dir = copy_of(sweep[1], tmp_path / "sweep")
    add_job(sweep_dir, "2", ["solver=mgrit", "seed=1", *TINY])  # failed before writing its log
    SweepSummary().on_multirun_end(sweep_config(sweep_dir), config_name="train")
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"lpt-train: sweep summary of 2 runs in {sweep_dir / 'report'} (summary.md, summary.csv")
    assert out.endswith("; skipped 1 job without a readable run log: 2\n")
    rows = csv_rows(sweep_dir / "report" / "summary.csv")
    assert [r["run"] for r in rows] == ["solver=serial", "solver=mgrit"]
    assert "seed=1" not in (sweep_dir / "report" / "summary.md").read_text()


def test_unreadable_log_is_skipped_and_errors_are_one_warning(sweep, tmp_path, capsys):
    sweep_dir = copy_of(sweep[1], tmp_path / "sweep")
    add_job(sweep_dir, "10", ["solver=serial", "seed=2", *TINY], log=b"not an HDF5 file")  # killed mid-write
    callback = SweepSummary()
    callback.on_multirun_end(sweep_config(sweep_dir))
    out, err = capsys.readouterr()
    assert err == "" and out.endswith("; skipped 1 job without a readable run log: 10\n"), (out, err)
    assert len(csv_rows(sweep_dir / "report" / "summary.csv")) == 2

    # the report folder cannot be made: one warning line naming the problem, no exception
    blocked = SweepSummary(out="summary.md/report")
    (sweep_dir / "summary.md").write_text("a file, not a folder\n")
    blocked.on_multirun_end(sweep_config(sweep_dir))
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("lpt-train: warning: no sweep summary: ") and err.count("\n") == 1, err
    assert "summary.md" in err

    # no job left a readable log: a warning, no summary
    empty = tmp_path / "empty"
    add_job(empty, "0", ["solver=serial"])
    add_job(empty, "1", ["solver=mgrit"], log=b"")
    callback.on_multirun_end(sweep_config(empty))
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"lpt-train: warning: no sweep summary: no readable run log under {empty}; "
                   "skipped 2 jobs without a readable run log: 0, 1\n")
    assert not (empty / "report").exists()
