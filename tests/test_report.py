"""lpt-report on the HDF5 logs of two runs (serial and layer-parallel): the files exist and the table's numbers
are those of the logs."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.cli.report import report
from lpt.logging import read_run
from lpt.report import plot_scaling
from lpt.train import run

TINY = ["dataset.n_train=60", "dataset.n_val=30", "model.depth=8", "train.steps=6", "train.eval_every=2",
        "logging.progress=false"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    serial = run(compose_config([*TINY]), root / "serial").run_dir
    mgrit = run(compose_config([*TINY, "solver=mgrit", "solver.cfactor=2", "solver.max_levels=3"]),
                root / "mgrit").run_dir
    return serial, mgrit


def _expected(run_dir: Path) -> dict[str, float]:
    """The numbers straight from the log, by the definitions of lpt.report.summary."""
    rec = read_run(run_dir)
    h, g = rec.history, rec.mgrit
    out = {}
    for key in ("loss", "train_acc", "val_acc"):
        finite = h[key][np.isfinite(h[key])]
        out[f"final_{key}"] = float(finite[-1])
    out["time_per_step_s"] = float((h["time_s"][-1] - h["time_s"][0]) / (h["step"][-1] - h["step"][0]))
    out["total_time_s"] = float(h["time_s"][-1])
    out["steps"] = int(h["step"][-1])
    for key in ("fwd_factor", "bwd_factor"):
        v = g.get(key)
        v = v[np.isfinite(v)] if v is not None else np.array([])
        out[f"{key}_mean"] = float(v.mean()) if v.size else math.nan
    return out


def test_report_files_and_numbers(two_runs, tmp_path):
    serial, mgrit = two_runs
    out = tmp_path / "report"
    files = report([str(serial), str(mgrit)], out, labels=["serial", "mgrit"])
    for name in ("summary.md", "summary.csv", "loss.png", "accuracy.png", "residuals.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert files[name] == out / name
    with (out / "summary.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"serial", "mgrit"}
    for label, run_dir in (("serial", serial), ("mgrit", mgrit)):
        want = _expected(run_dir)
        row = rows[label]
        assert int(row["steps"]) == want["steps"] == 6
        for key, value in want.items():
            if key == "steps":
                continue
            got = float(row[key])
            if math.isnan(value):
                assert math.isnan(got), (label, key)
            else:
                assert got == value, (label, key, got, value)  # written at full precision
    assert math.isnan(float(rows["serial"]["fwd_factor_mean"]))
    assert 0 < float(rows["mgrit"]["fwd_factor_mean"]) < 1
    # the Markdown table shows the same numbers (6 significant digits)
    md = (out / "summary.md").read_text()
    for label, run_dir in (("serial", serial), ("mgrit", mgrit)):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))
        assert f"{_expected(run_dir)['final_val_acc']:.6g}" in line
        assert f"{_expected(run_dir)['time_per_step_s']:.6g}" in line


def test_lpt_report_command_and_scaling_plot(two_runs, tmp_path):
    serial, mgrit = two_runs
    scaling = tmp_path / "scaling.json"
    scaling.write_text('[{"ranks": 1, "measured_s": 1.0, "predicted_s": 1.1}, '
                       '{"ranks": 2, "measured_s": 0.6, "predicted_s": 0.55}]')
    exe = Path(sys.executable).with_name("lpt-report")
    proc = subprocess.run([str(exe), str(serial), str(mgrit), "--out", str(tmp_path / "r"), "--scaling",
                           str(scaling)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| run |" in proc.stdout
    assert (tmp_path / "r" / "scaling.png").stat().st_size > 0
    proc = subprocess.run([str(exe), str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "lpt-report: error: no run log" in proc.stderr


def test_scaling_plot_from_rows(tmp_path):
    rows = [{"ranks": p, "measured_s": 1 / p, "predicted_s": 1.1 / p} for p in (1, 2, 4)]
    assert plot_scaling(rows, tmp_path / "s.png").stat().st_size > 0
