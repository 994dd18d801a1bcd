"""The drivers in scripts/ that the README names run (tiny sizes) and print or write what they promise.

This file holds the shared helper and scripts/reproduce_papers.py; the performance-model scripts are in
test_scripts_perfmodel.py, the benchmarks in test_scripts_bench.py (split so that `--dist loadfile` balances)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import child_xla_flags
from lpt.logging import read_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def script(name: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python scripts/NAME ARGS`` in a fresh process (float32, one device, as a user runs it)."""
    env = {**os.environ, "XLA_FLAGS": child_xla_flags()}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow(seconds=29)
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


def test_pytest_cpu_profile_records_each_test_and_sums_them(tmp_path):
    """scripts/pytest_cpu_profile.py as the README runs it: pytest with the plugin on two tests (one compiles a
    jax program, one starts a process), then the summary: a record per test with the compilation jax reported and
    the CPU time of the process started, and totals that are the records' sums."""
    (tmp_path / "test_two.py").write_text(
        "import subprocess, sys\nimport jax, jax.numpy as jnp\n\n"
        "def test_compiles():\n    assert float(jax.jit(lambda x: jnp.sin(x).sum())(jnp.ones(3))) > 0\n\n"
        "def test_starts_a_process():\n"
        "    subprocess.run([sys.executable, '-c', 'sum(i * i for i in range(3_000_000))'], check=True)\n")
    prefix = tmp_path / "prof"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # one process: "main"
    env.update(PYTHONPATH=str(SCRIPTS), CPU_PROFILE=str(prefix))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_cpu_profile",
                           "test_two.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json

    records = {r["test"].split("::")[1]: r for r in map(json.loads, open(f"{prefix}.main.jsonl"))}
    assert set(records) == {"test_compiles", "test_starts_a_process"}
    # the session's compilation cache (tests/conftest.py) is inherited: the program is looked up there
    assert records["test_compiles"]["compile"] > 0 and records["test_compiles"]["misses"] + records[
        "test_compiles"]["hits"] >= 1
    assert records["test_starts_a_process"]["children_cpu"] > 0 and records["test_starts_a_process"]["compile"] == 0
    out = script("pytest_cpu_profile.py", str(prefix)).stdout
    own = sum(r["cpu"] for r in records.values())
    assert out.startswith(f"2 tests: pytest processes {own:.0f} CPU-s"), out
    assert "test_two.py::test_starts_a_process" in out and "test_two.py" in out
