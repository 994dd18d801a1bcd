"""scripts/validate_model.py, `lpt-model` and scripts/scaling/ (the performance model against measurements) run
(tiny sizes) and print or write what they promise.

All use the same profile (+experiment=peaks_1024, batch 30) on one device or on 2 MPI ranks: one module, run in
this order on one worker, so that later calibrations load the programs the first ones compiled from the session's
compilation cache (tests/conftest.py). The validate_model.py calibrations (one device, then 2 MPI ranks added to a
copy of that file) are module fixtures: their tests check them, and the scaling sweep compares with them instead
of calibrating the same profiles again."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_xla_flags
from lpt.logging import read_run
from test_parallel_comm import mpirun
from test_scripts import SCRIPTS, script


RATIO = re.compile(r"(\w+) P=(\d) N=\s*(\d+) B=\d+: mgrit gradient measured\s+([\d.]+) ms, predicted\s+([\d.]+) ms, "
                   r"predicted/measured ([\d.]+)")


def _check_validation_rows(stdout: str, rows_file: Path, backend: str, ranks: int) -> None:
    rows = json.loads(rows_file.read_text())
    assert [r["depth"] for r in rows] == [16, 32]
    printed = RATIO.findall(stdout)
    assert len(printed) == 2, stdout
    for row, (b, p, n, measured, predicted, ratio) in zip(rows, printed):
        assert (row["backend"], row["ranks"], row["depth"]) == (b, int(p), int(n)) == (backend, ranks, row["depth"])
        assert row["mgrit_measured_s"] > 0 and row["mgrit_predicted_s"] > 0
        assert math.isclose(row["mgrit_ratio"], row["mgrit_predicted_s"] / row["mgrit_measured_s"])
        assert float(ratio) == pytest.approx(row["mgrit_ratio"], abs=0.006)
    # the verdict follows from the rows (which way it goes depends on the timing, not checked here)
    ok = all(0.75 <= r[k] <= 1.25 for r in rows for k in ("mgrit_ratio", "serial_ratio") if k in r)
    assert f"all ratios within 25 %: {'yes' if ok else 'NO'}" in stdout


@pytest.fixture(scope="module")
def single_calibration(tmp_path_factory):
    """scripts/validate_model.py --calibrate on one device, depths 16 and 32: (process, calibration file, its
    content as this run left it, rows file)."""
    tmp = tmp_path_factory.mktemp("calibration_single")
    cal, rows = tmp / "cal.json", tmp / "rows.json"
    proc = script("validate_model.py", "--calibrate", "--depths", "16", "32", "--repeats", "1", "--file", str(cal),
                  "--json", str(rows), "+experiment=peaks_1024", "dataset.n_train=30")
    return proc, cal, json.loads(cal.read_text()), rows


@pytest.fixture(scope="module")
def mpi_calibration(tmp_path_factory, single_calibration):
    """The same under mpirun on 2 ranks (--backend mpi), into a copy of the one-device calibration file, which
    then holds both profiles and the MPI message costs: (process, calibration file, rows file)."""
    tmp = tmp_path_factory.mktemp("calibration_mpi")
    cal, rows = tmp / "cal.json", tmp / "rows.json"
    shutil.copy(single_calibration[1], cal)
    proc = mpirun(2, SCRIPTS / "validate_model.py", "--calibrate", "--backend", "mpi", "--depths", "16", "32",
                  "--repeats", "1", "--file", str(cal), "--json", str(rows), "+experiment=peaks_1024",
                  "dataset.n_train=30", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, cal, rows


@pytest.mark.slow(seconds=52)
def test_validate_model_single(single_calibration):
    """scripts/validate_model.py calibrates into the given file and prints predicted/measured per depth."""
    proc, _, stored, rows = single_calibration
    assert stored["profiles"]
    _check_validation_rows(proc.stdout, rows, "single", 1)
    assert all(r["serial_ratio"] > 0 for r in json.loads(rows.read_text()))


@pytest.mark.slow(seconds=82)
def test_validate_model_under_mpi_on_two_ranks(mpi_calibration):
    proc, cal, rows = mpi_calibration
    stored = json.loads(cal.read_text())
    # the one-device file it started from holds neither a 2-process profile nor MPI message costs
    assert any(k.endswith("/procs2") for k in stored["profiles"]) and "mpi" in stored["comm"]
    _check_validation_rows(proc.stdout, rows, "mpi", 2)


def test_lpt_model_calibrate_then_predict(tmp_path):
    """The README's lpt-model commands: calibrate on this machine (tiny profile), then predict from the file."""
    exe = Path(sys.executable).with_name("lpt-model")
    overrides = ["+experiment=peaks_1024", "dataset.n_train=30", "model.depth=32"]
    env = {**os.environ, "XLA_FLAGS": child_xla_flags()}
    cal = subprocess.run([str(exe), "calibrate", *overrides, "--file", "cal.json", "--comm", "single", "--repeats",
                          "1"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert cal.returncode == 0, cal.stdout[-2000:] + cal.stderr[-2000:]
    stored = json.loads((tmp_path / "cal.json").read_text())
    (profile,) = stored["profiles"].values()
    for name in ("step", "adjoint", "serial"):
        assert all(t > 0 for t in profile["curves"][name]["seconds"]), name
    pred = subprocess.run([str(exe), "predict", *overrides, "--file", "cal.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert "gradient, layer-parallel" in pred.stdout and "serial" in pred.stdout


@pytest.mark.slow(seconds=70)
def test_strong_scaling_sweep_and_comparison_with_the_model(tmp_path, mpi_calibration):
    """scripts/scaling/sweep.py (local mpirun, 1 and 2 layer ranks) and compare.py (measured vs predicted).

    The preset trains with L-BFGS: its line search takes gradients at trial points, which under MPI must come
    from the solver's adjoint solve (lpt.train.state.line_search_value), not from differentiating collectives."""
    from test_parallel_comm import require_mpi4jax

    require_mpi4jax()
    out = tmp_path / "strong"
    cal = mpi_calibration[1]  # the 1-process and 2-process profiles of this preset and the MPI message costs
    script("scaling/sweep.py", "strong", "+experiment=peaks_1024", "dataset.n_train=30", "dataset.n_val=15",
           "model.depth=32", "--ranks", "1,2", "--steps", "3", "--out", str(out),
           "--mpirun", f"{shutil.which('mpirun')} --allow-run-as-root --oversubscribe")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["P1_N32", "P2_N32"]
    assert read_run(out / "P2_N32").attrs["grid"].tolist() == [1, 2]
    proc = script("scaling/compare.py", str(out), "--file", str(cal))
    rows = json.loads((out / "compare.json").read_text())
    assert sorted(r["ranks"] for r in rows) == [1, 2]
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in rows)
    assert "predicted" in proc.stdout
