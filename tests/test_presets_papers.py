"""The paper presets: their settings are those of their sources, each is documented in the README, the heavy ones
run a few steps on reduced data (tests/test_configs.py), and peaks_lpl reaches ≥ 95 % validation accuracy serially and
layer-parallel within its default budget (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from conftest import child_xla_flags, on_worker_core

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["peaks_lpl", "peaks_1024", "indian_pines_512", "mnist_4096", "mnist_torchbraid", "regression_2048"]

SOURCE = {
    # the reference C++ code's level-set example (steffi7574/LayerParallelLearning, examples/peaks/peaks.cfg)
    "peaks_lpl": {"model.width": 8, "model.depth": 32, "model.T": 1.0, "model.activation": "smoothrelu",
                  "optimizer.name": "lbfgs", "model.gamma_tik": 1e-7, "model.gamma_ddt": 1e-5,
                  "model.gamma_class": 1e-7, "solver.name": "mgrit", "solver.cfactor": 2, "solver.max_levels": 10,
                  "solver.fwd_iters": 2, "solver.bwd_iters": 2, "train.batch_size": None},
    # Günther et al.'s strong-scaling problems: N = 1024 / 512, 2 cycles per optimisation step
    "peaks_1024": {"dataset.name": "peaks", "model.depth": 1024, "solver.name": "mgrit", "solver.fwd_iters": 2},
    "indian_pines_512": {"dataset.name": "indian_pines", "model.depth": 512, "solver.name": "mgrit",
                         "solver.fwd_iters": 2},
    # Kirby et al.: 4096 residual conv layers on MNIST, few channels, cfactor 4
    "mnist_4096": {"dataset.name": "mnist", "model.depth": 4096, "model.layer": "conv", "solver.cfactor": 4},
    # TorchBraid's MNIST example
    "mnist_torchbraid": {"dataset.name": "mnist", "model.depth": 32, "model.width": 3, "model.T": 1.0,
                         "model.layer": "conv2", "model.activation": "relu", "optimizer.name": "sgd",
                         "optimizer.lr": 0.01, "optimizer.momentum": 0.9, "train.batch_size": 50,
                         "solver.max_levels": 3, "solver.cfactor": 4, "solver.fwd_iters": 2, "solver.bwd_iters": 1},
}


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", sorted(SOURCE))
def test_preset_settings_are_those_of_the_source(name):
    cfg = compose_config([f"+experiment={name}"])
    for key, value in SOURCE[name].items():
        assert _get(cfg, key) == value, (name, key)


def test_regression_preset_is_deeper_than_1900_layers():
    cfg = compose_config(["+experiment=regression_2048"])
    assert cfg["dataset"]["name"].startswith("regression") and cfg["model"]["depth"] > 1900


def test_every_paper_preset_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reproducing the papers"):]
    for name in PRESETS:
        assert f"+experiment={name}" in section, name


def lpt_train(args, cwd, timeout=1200):
    """The installed console script (a fresh process: float32 as in production, no test-session x64)."""
    exe = Path(sys.executable).with_name("lpt-train")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["XLA_FLAGS"] = child_xla_flags()
    return subprocess.run(on_worker_core([str(exe), *args]), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.optimized
@pytest.mark.slow(seconds=65)
@pytest.mark.parametrize("solver", ["serial", "mgrit"])
def test_peaks_lpl_reaches_95_percent(solver, tmp_path):
    """The reference code's level-set setting: ≥ 95 % validation accuracy within the preset's budget."""
    proc = lpt_train(["+experiment=peaks_lpl", f"solver={solver}", f"hydra.run.dir={tmp_path}",
                      "logging.progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h = read_run(tmp_path).history
    val = h["val_acc"][np.isfinite(h["val_acc"])]
    assert h["step"][-1] == compose_config(["+experiment=peaks_lpl"])["train"]["steps"]
    assert val[-1] >= 0.95, val


def test_readme_figures_are_those_of_the_reproduction_reports():
    """The README's figures table is scripts/reproduce_papers.py's results/papers/figures.md, and each of its rows
    holds the numbers of that preset's lpt-report summary (results/papers/PRESET/summary.csv)."""
    import csv

    papers = ROOT / "results" / "papers"
    table = (papers / "figures.md").read_text().strip()
    readme = (ROOT / "README.md").read_text()
    assert table in readme[readme.index("## Reproducing the papers"):]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert sorted({r[0] for r in rows}) == sorted(PRESETS)
    for preset, solver, steps, metric, per_step, *_ in rows:
        with open(papers / preset / "summary.csv") as f:
            summary = {r["run"]: r for r in csv.DictReader(f)}[solver]
        assert int(steps) == int(summary["steps"])
        if metric.startswith("acc"):
            assert metric == f"acc {100 * float(summary['final_val_acc']):.1f} %"
        else:
            assert metric == f"mse {float(summary['final_val_mse']):.3g}"
        assert per_step == f"{float(summary['time_per_step_s']):.3g} s"
