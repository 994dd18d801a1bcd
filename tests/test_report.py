"""lpt-report on the HDF5 logs of two runs (serial and layer-parallel): the files exist and the table's numbers
are those of the logs; the MGRIT figures and the run labels on synthetic logs (written with RunLog)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lpt.cli.compose import compose_config
from lpt.cli.report import report
from lpt.logging import LOG_NAME, RunLog, read_run
from lpt.report import (convergence_figure, labels_from_configs, plot_convergence, plot_residuals, plot_scaling,
                        residuals_figure, summarize)
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
    for name in ("summary.md", "summary.csv", "loss.png", "accuracy.png", "residuals.png", "convergence.png"):
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
    # no --labels: the runs are named by the setting that differs (solver.cfactor etc. follow from solver.name)
    assert "| solver.name=serial |" in proc.stdout and "| solver.name=mgrit |" in proc.stdout
    assert (tmp_path / "r" / "scaling.png").stat().st_size > 0
    proc = subprocess.run([str(exe), str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "lpt-report: error: no run log" in proc.stderr


def test_scaling_plot_from_rows(tmp_path):
    rows = [{"ranks": p, "measured_s": 1 / p, "predicted_s": 1.1 / p} for p in (1, 2, 4)]
    assert plot_scaling(rows, tmp_path / "s.png").stat().st_size > 0


# --- synthetic logs: MGRIT figures and run labels -------------------------------------------------------------

CONFIG = {"seed": 0, "data_dir": None, "dataset": {"name": "peaks"}, "model": {"depth": 8},
          "solver": {"name": "mgrit", "cfactor": 4, "fwd_iters": 3, "bwd_iters": 2}}


def _config(**solver) -> dict:
    return {**CONFIG, "solver": {**CONFIG["solver"], **solver}}


def _residuals(step: int, cycles: int, width: int) -> np.ndarray:
    """‖r_k‖ = 10^(−k)/step for k = 1..cycles, NaN-padded to ``width``."""
    r = np.full(width, np.nan)
    r[:cycles] = 10.0 ** -np.arange(1, cycles + 1) / step
    return r


def write_log(run_dir: Path, config: dict, steps: int = 5, fwd: int = 3, bwd: int = 2,
              relative: bool = True) -> Path:
    """A run log of ``steps`` steps with ``fwd`` / ``bwd`` MGRIT cycles per step (``fwd`` + 1 columns, the
    last step one cycle short: NaN padding); ``fwd=0``: a serial run (no MGRIT statistics)."""
    with RunLog(run_dir / LOG_NAME, config_yaml=yaml.safe_dump(config, sort_keys=False)) as log:
        for s in range(1, steps + 1):
            mgrit = {}
            for prefix, cycles, width in (("fwd", fwd - (s == steps), fwd + 1), ("bwd", bwd, bwd)):
                if fwd:
                    r = _residuals(s, cycles, width)
                    mgrit[f"{prefix}_residual"] = r
                    if relative:
                        mgrit[f"{prefix}_rel_residual"] = r / 4
                    mgrit[f"{prefix}_factor"] = 0.1 if cycles >= 2 else np.nan
            log.append({"step": s, "loss": 1.0 / s, "time_s": 0.1 * s}, mgrit)
    return run_dir


def _data_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.lines]


def test_residuals_figure_rows_and_colourbar(tmp_path):
    a = summarize(write_log(tmp_path / "a", _config(cfactor=2), steps=40), "cf2")
    b = summarize(write_log(tmp_path / "b", _config(cfactor=4)), "cf4")
    serial = summarize(write_log(tmp_path / "s", {**CONFIG, "solver": {"name": "serial"}}, fwd=0), "serial")
    fig = residuals_figure([a, serial, b], max_lines=24)
    panels = _data_axes(fig)
    # one row per run with MGRIT statistics (the serial run has none), forward and adjoint columns
    assert sorted(ax.get_title() for ax in panels) == ["cf2: adjoint solve", "cf2: forward solve",
                                                       "cf4: adjoint solve", "cf4: forward solve"]
    rows = {ax.get_title().split(":")[0]: ax.get_subplotspec().rowspan.start for ax in panels}
    assert rows == {"cf2": 0, "cf4": 1}
    by_title = {ax.get_title(): ax for ax in panels}
    # at most max_lines steps per panel, each line the step's finite cycles
    assert len(by_title["cf2: forward solve"].lines) == 24 and len(by_title["cf4: forward solve"].lines) == 5
    first, last = by_title["cf4: forward solve"].lines[0], by_title["cf4: forward solve"].lines[-1]
    assert list(first.get_xdata()) == [1, 2, 3] and list(last.get_xdata()) == [1, 2]  # last step: 2 cycles
    np.testing.assert_allclose(first.get_ydata(), [0.1, 0.01, 0.001])
    assert by_title["cf4: forward solve"].get_yscale() == "log"
    # colour = training step, one colour bar and no legend
    colourbars = [ax for ax in fig.axes if ax.get_ylabel() == "training step"]
    assert len(colourbars) == 1
    assert first.get_color() != last.get_color()
    assert not fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    assert residuals_figure([serial]) is None
    assert plot_residuals([serial], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert plot_residuals([a, b], tmp_path / "r.png").stat().st_size > 0


def test_residuals_figure_one_adjoint_cycle(tmp_path):
    one = summarize(write_log(tmp_path / "one", _config(bwd_iters=1), bwd=1), "one")
    two = summarize(write_log(tmp_path / "two", _config()), "two")
    # every run with one adjoint cycle: no adjoint column at all
    fig = residuals_figure([one])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["one: forward solve"]
    # mixed: the one-cycle run's adjoint panel holds a note, no lines
    fig = residuals_figure([one, two])
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(by_title) == {"one: forward solve", "one: adjoint solve", "two: forward solve", "two: adjoint solve"}
    note = by_title["one: adjoint solve"]
    assert not note.lines and "convergence.png" in note.texts[0].get_text()
    assert len(by_title["two: adjoint solve"].lines) == 5


def test_convergence_figure(tmp_path):
    a = summarize(write_log(tmp_path / "a", _config(), steps=6), "a")
    b = summarize(write_log(tmp_path / "b", _config(bwd_iters=1), bwd=1), "b")
    serial = summarize(write_log(tmp_path / "s", {**CONFIG, "solver": {"name": "serial"}}, fwd=0), "serial")
    fig = convergence_figure([a, serial, b])
    res, fac = fig.axes[:2]
    # residual panel: forward (solid) and adjoint (dashed) of both MGRIT runs
    assert [ln.get_linestyle() for ln in res.lines] == ["-", "--", "-", "--"]
    assert res.lines[0].get_color() == res.lines[1].get_color() != res.lines[2].get_color()
    fwd_a = res.lines[0]
    assert list(fwd_a.get_xdata()) == [1, 2, 3, 4, 5, 6]
    # the last finite cycle of each step (the last step has one cycle fewer), relative to the state norm
    want = [10.0 ** -3 / s / 4 for s in range(1, 6)] + [10.0 ** -2 / 6 / 4]
    np.testing.assert_allclose(fwd_a.get_ydata(), want)
    assert "relative" in res.get_ylabel() and res.get_yscale() == "log"
    # factor panel: run b's adjoint factors are all NaN (one cycle): three lines
    assert [ln.get_linestyle() for ln in fac.lines] == ["-", "--", "-"]
    np.testing.assert_allclose(fac.lines[0].get_ydata(), 0.1)
    assert fac.get_xlabel() == "training step" and fac.get_yscale() == "log"
    # one figure legend: the run labels and the line styles, clear of the panels and their titles
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "forward", "adjoint"]
    fig.canvas.draw()
    box = legend.get_window_extent()
    for ax in (res, fac):
        assert not box.overlaps(ax.get_window_extent()) and not box.overlaps(ax.title.get_window_extent())
    # without relative residuals: absolute ones, said on the axis
    c = summarize(write_log(tmp_path / "c", _config(), relative=False), "c")
    res_c = convergence_figure([c]).axes[0]
    assert "absolute" in res_c.get_ylabel()
    np.testing.assert_allclose(res_c.lines[0].get_ydata()[0], 10.0 ** -3)
    assert convergence_figure([serial]) is None
    assert plot_convergence([serial], tmp_path / "none.png") is None


def test_labels_from_differing_settings(tmp_path):
    a = write_log(tmp_path / "2024-01-01" / "10-00-00", {**_config(cfactor=2), "data_dir": "/data/a"})
    b = write_log(tmp_path / "2024-01-01" / "11-00-00", {**_config(cfactor=4), "data_dir": "/data/b"})
    assert labels_from_configs([a, b]) == ["solver.cfactor=2", "solver.cfactor=4"]  # data_dir left out
    # identical settings (or one run): the directory names
    c = write_log(tmp_path / "2024-01-02" / "10-00-00", _config(cfactor=2))
    assert labels_from_configs([a, c]) == ["2024-01-01/10-00-00", "2024-01-02/10-00-00"]
    assert labels_from_configs([a]) == ["10-00-00"]
    # a solver's own settings follow from its name; several differing settings, in the config's order
    s = write_log(tmp_path / "serial", {**CONFIG, "seed": 1, "solver": {"name": "serial"}}, fwd=0)
    assert labels_from_configs([s, a, b]) == ["seed=1 solver.name=serial", "seed=0 solver.name=mgrit solver.cfactor=2",
                                              "seed=0 solver.name=mgrit solver.cfactor=4"]
    # equal labels stay distinct
    assert labels_from_configs([a, b, c]) == ["solver.cfactor=2 (2024-01-01/10-00-00)", "solver.cfactor=4",
                                              "solver.cfactor=2 (2024-01-02/10-00-00)"]


def test_report_default_labels_and_mgrit_figures(tmp_path):
    a = write_log(tmp_path / "x" / "run", _config(cfactor=2))
    b = write_log(tmp_path / "y" / "run", _config(cfactor=4, bwd_iters=1), bwd=1)
    files = report([str(a), str(b)], tmp_path / "out")
    assert {"residuals.png", "convergence.png"} <= set(files)
    assert all(files[n].stat().st_size > 0 for n in ("residuals.png", "convergence.png"))
    with (tmp_path / "out" / "summary.csv").open() as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["solver.cfactor=2 solver.bwd_iters=2",
                                                         "solver.cfactor=4 solver.bwd_iters=1"]
    # one cycle per solve everywhere: nothing per cycle to draw, the per-step figure only
    one = write_log(tmp_path / "z" / "run", _config(fwd_iters=1, bwd_iters=1), fwd=1, bwd=1)
    files = report([str(one)], tmp_path / "out1")
    assert "convergence.png" in files and "residuals.png" not in files
