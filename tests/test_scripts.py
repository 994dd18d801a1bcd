"""The drivers in scripts/ that the README names run (tiny sizes) and print or write what they promise."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpt.logging import read_run
from test_parallel_comm import mpirun

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def script(name: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python scripts/NAME ARGS`` in a fresh process (float32, one device, as a user runs it)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_reproduce_papers_table_equals_the_logs(tmp_path):
    """scripts/reproduce_papers.py: serial and mgrit runs of a preset, its lpt-report folder, and a figures
    table whose numbers are those of the HDF5 logs."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    proc = script("reproduce_papers.py", "peaks_lpl", "--steps", "4", "--runs", str(runs), "--out", str(out),
                  "dataset.n_train=100", "dataset.n_val=50")
    for name in ("summary.md", "summary.csv", "loss.png", "accuracy.png", "residuals.png"):
        assert (out / "peaks_lpl" / name).stat().st_size > 0, name
    table = (out / "figures.md").read_text()
    assert table.strip() in proc.stdout
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in table.splitlines() if line.startswith("| peaks_lpl")}
    assert set(rows) == {"serial", "mgrit"}
    for solver, cells in rows.items():
        rec = read_run(runs / "peaks_lpl" / solver)
        h = rec.history
        assert int(cells[2]) == int(h["step"][-1]) == 4
        val = h["val_acc"][np.isfinite(h["val_acc"])][-1]
        assert cells[3] == f"acc {100 * val:.1f} %"
        per_step = (h["time_s"][-1] - h["time_s"][0]) / (h["step"][-1] - h["step"][0])
        assert cells[4] == f"{per_step:.3g} s"
        if solver == "mgrit":
            assert cells[6] == f"{np.mean(rec.mgrit['fwd_factor'][np.isfinite(rec.mgrit['fwd_factor'])]):.3f}"
        else:
            assert cells[6] == "–"


def test_reproduce_papers_rejects_unknown_presets():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "reproduce_papers.py"), "peaks_9"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "unknown preset(s) ['peaks_9']" in proc.stderr


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
    assert "all ratios within 25 %:" in stdout


def test_validate_model_single(tmp_path):
    """scripts/validate_model.py calibrates into the given file and prints predicted/measured per depth."""
    cal, rows = tmp_path / "cal.json", tmp_path / "rows.json"
    proc = script("validate_model.py", "--calibrate", "--depths", "16", "32", "--repeats", "1", "--file", str(cal),
                  "--json", str(rows), "+experiment=peaks_1024", "dataset.n_train=60")
    assert json.loads(cal.read_text())["profiles"]
    _check_validation_rows(proc.stdout, rows, "single", 1)
    assert all(r["serial_ratio"] > 0 for r in json.loads(rows.read_text()))


def test_validate_model_under_mpi_on_two_ranks(tmp_path):
    cal, rows = tmp_path / "cal.json", tmp_path / "rows.json"
    proc = mpirun(2, SCRIPTS / "validate_model.py", "--calibrate", "--backend", "mpi", "--depths", "16", "32",
                  "--repeats", "1", "--file", str(cal), "--json", str(rows), "+experiment=peaks_1024",
                  "dataset.n_train=60", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = json.loads(cal.read_text())
    assert any(k.endswith("/procs2") for k in stored["profiles"]) and "mpi" in stored["comm"]
    _check_validation_rows(proc.stdout, rows, "mpi", 2)


def test_bench_solver_prints_the_work_model_ratio():
    # large enough that one cycle is well above timer noise (the marginal cycle time is a difference of timings)
    proc = script("bench_solver.py", "--depth", "256", "--width", "8", "--batch", "64", "--cfactor", "4",
                  "--levels", "4", "--repeats", "3")
    found = re.search(r"measured / predicted\s+(\S+)", proc.stdout)
    assert found, proc.stdout
    ratio = float(found.group(1))
    assert 0 < ratio < 100
    assert re.search(r"one-shot step .* ms", proc.stdout)


def test_bench_parareal_runs(tmp_path):
    out = tmp_path / "parareal.json"
    proc = script("bench_parareal.py", "--layer", "dense", "--input-shape", "4", "--depth", "12", "--batch", "8",
                  "--num-parallel", "1,3", "--repeats", "2", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["original_ms"] > 0 and sorted(result["parareal_ms"]) == ["1", "3"]
    for row in result["parareal_ms"].values():
        assert all(row[part] > 0 for part in ("pre", "parallel", "coarse", "post", "total"))
        assert row["ideal"] == pytest.approx(row["pre"] + row["1 subnet"] + row["coarse"] + row["post"])
    assert "N_p=3" in proc.stdout


def test_bench_comm_fits_a_line(tmp_path):
    """Messages between 2 emulated devices (parallel=mesh): one time per size, and a stored fit whose per-byte
    cost is positive (a 4 MiB message takes longer than an 8-byte one)."""
    cal = tmp_path / "cal.json"
    sizes = ["8", "65536", "4194304"]
    proc = script("bench_comm.py", "mesh", "--sizes", *sizes, "--repeats", "3", "--save", str(cal))
    for nbytes in sizes:
        assert re.search(rf"^\s+{nbytes} B\s+[\d.]+ us\s+fit", proc.stdout, re.M), proc.stdout
    costs = json.loads(cal.read_text())["comm"]["mesh"]
    assert costs["alpha"] >= 0 and costs["beta"] > 0


def test_lpt_model_calibrate_then_predict(tmp_path):
    """The README's lpt-model commands: calibrate on this machine (tiny profile), then predict from the file."""
    exe = Path(sys.executable).with_name("lpt-model")
    overrides = ["+experiment=peaks_1024", "dataset.n_train=30", "model.depth=32"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
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


def test_strong_scaling_sweep_and_comparison_with_the_model(tmp_path):
    """scripts/scaling/sweep.py (local mpirun, 1 and 2 layer ranks) and compare.py (measured vs predicted).

    The preset trains with L-BFGS: its line search takes gradients at trial points, which under MPI must come
    from the solver's adjoint solve (lpt.train.state.line_search_value), not from differentiating collectives."""
    from test_parallel_comm import require_mpi4jax

    require_mpi4jax()
    out = tmp_path / "strong"
    cal = tmp_path / "cal.json"
    script("validate_model.py", "--calibrate", "--depths", "16", "--repeats", "1", "--file", str(cal),
           "+experiment=peaks_1024", "dataset.n_train=30")
    proc = mpirun(2, SCRIPTS / "validate_model.py", "--calibrate", "--backend", "mpi", "--depths", "16",
                  "--repeats", "1", "--file", str(cal), "+experiment=peaks_1024", "dataset.n_train=30", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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


def test_bench_layers_prints_ratios_for_every_kind():
    """scripts/bench_layers.py --quick: one row per layer kind and formulation with serial and relaxation
    times per layer step and their ratios (the ratio columns are the quotients of the time columns)."""
    proc = script("bench_layers.py", "--quick", "--intervals", "4", "--repeats", "1")
    assert re.search(r"throughput yardstick: 2048x2048 matmul, float32: [\d.]+ GFLOP/s", proc.stdout)
    # layer width batch image impl  serial (compile)  relax-vmap (compile)  relax-auto (compile)  batch  ratios
    row = re.compile(r"^(dense|conv2)\s+\d+\s+\d+\s+\S+\s+(\S+)\s+([\d.]+) \(\s*[\d.]+\)\s+([\d.]+) \(\s*[\d.]+\)"
                     r"\s+([\d.]+) \(\s*[\d.]+\)\s+\d+\s+([\d.]+)\s+([\d.]+)$", re.M)
    rows = row.findall(proc.stdout)
    assert {(r[0], r[1]) for r in rows} == {("dense", "-"), ("conv2", "matmul"), ("conv2", "xla")}, proc.stdout
    for _, _, *numbers in rows:
        t_ser, t_vmap, t_auto, r_vmap, r_auto = map(float, numbers)
        assert min(t_ser, t_vmap, t_auto) > 0
        assert r_vmap == pytest.approx(t_vmap / t_ser, rel=0.05, abs=0.011)
        assert r_auto == pytest.approx(t_auto / t_ser, rel=0.05, abs=0.011)


def _convnet_rows(stdout: str) -> dict[str, float]:
    return {m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^  (\S.*?)\s+([\d.]+) s \(\s*[-\d.]+\)\s+/ yardstick", stdout, re.M)}


def test_bench_convnet_single_process():
    proc = script("bench_convnet.py", "--depths", "8", "--channels", "2", "--image", "6", "--batch", "2",
                  "--repeats", "1")
    rows = _convnet_rows(proc.stdout)
    assert set(rows) == {"yardstick", "lpt serial", "layer-parallel, 1 rank", "layer-parallel skip, 1 rank"}
    assert all(t > 0 for t in rows.values())


def test_bench_convnet_on_two_mpi_ranks():
    proc = mpirun(2, SCRIPTS / "bench_convnet.py", "--depths", "8", "--channels", "2", "--image", "6", "--batch",
                  "2", "--repeats", "1", "--backend", "mpi", "--variants", "skip")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = _convnet_rows(proc.stdout)
    assert {"layer-parallel skip, 1 rank", "layer-parallel skip, 2 ranks"} <= set(rows)
    assert "layer-parallel, 2 ranks" not in rows
    speedup = re.search(r"speed-up layer-parallel skip 2 ranks / 1 rank: ([\d.]+)", proc.stdout)
    assert speedup and float(speedup.group(1)) > 0


def test_time_preset_step(shared_data):
    proc = script("time_preset_step.py", "mnist_torchbraid", f"data_dir={shared_data}", "dataset.n_train=100",
                  "model.depth=8", "--repeats", "1")
    found = re.search(r"mnist_torchbraid .*: step ([\d.]+) s \(min of 1; first step incl\. compilation ([\d.]+) s\), "
                      r"batch 50", proc.stdout)
    assert found, proc.stdout
    assert 0 < float(found.group(1)) < float(found.group(2))
