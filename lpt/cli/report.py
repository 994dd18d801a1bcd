"""``lpt-report RUN_DIR… [--out results/NAME]``: summary of runs from their HDF5 logs.

Writes into the output folder: ``summary.md`` (Markdown table), ``summary.csv``, ``loss.png``, ``accuracy.png``
or ``mse.png`` (validation metric), for runs with the layer-parallel solver ``convergence.png`` (per training
step: residual after the last cycle of each solve, convergence factors) and ``residuals.png`` (residual per cycle,
colour = training step; solves with more than one cycle), and, with ``--scaling FILE`` (JSON rows with
``ranks``, ``measured_s``, ``predicted_s``, e.g. from scripts/scaling/compare.py), ``scaling.png``. Runs are
named by the settings that differ between them (``solver.cfactor=4``) unless ``--labels`` are given.
Definitions of the numbers: :mod:`lpt.report.summary`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpt-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or their run.h5 files)")
    p.add_argument("--out", default="results/report", help="output folder (created)")
    p.add_argument("--labels", nargs="*", default=None,
                   help="names of the runs in tables and legends (default: the settings that differ between them)")
    p.add_argument("--scaling", default=None, help="JSON file of measured vs predicted scaling rows")
    p.add_argument("--title", default="", help="title of the figures")
    return p


def report(runs: Sequence[str], out: str | Path, labels: Sequence[str] | None = None, scaling: str | None = None,
           title: str = "") -> dict[str, Path]:
    """Write the tables and figures of ``runs`` into ``out``; returns the written files by name."""
    from lpt.report import (labels_from_configs, markdown_table, plot_convergence, plot_curves, plot_residuals,
                            plot_scaling, summarize, write_csv)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(labels) if labels else labels_from_configs(runs)
    if len(labels) != len(runs):
        raise ValueError(f"--labels: {len(labels)} names for {len(runs)} runs")
    summaries = [summarize(r, label) for r, label in zip(runs, labels)]
    rows = [s.row for s in summaries]
    files: dict[str, Path] = {}
    table = markdown_table(rows)
    files["summary.md"] = out / "summary.md"
    files["summary.md"].write_text(f"# Run summary{': ' + title if title else ''}\n\n{table}\n\n"
                                   "final_*: last finite value; time_per_step_s: wall time per step after the "
                                   "first logged step; *_factor_mean: mean over steps of the MGRIT convergence factor "
                                   "(geometric mean of ‖r_k‖/‖r_k−1‖ over cycles k ≥ 2).\n")
    files["summary.csv"] = write_csv(rows, out / "summary.csv")
    if plot_curves(summaries, "loss", out / "loss.png", ylabel="training loss", logy=True, title=title):
        files["loss.png"] = out / "loss.png"
    for key, name, label in (("val_acc", "accuracy.png", "validation accuracy"),
                             ("val_mse", "mse.png", "validation MSE")):
        if plot_curves(summaries, key, out / name, ylabel=label, logy=key.endswith("mse"), title=title):
            files[name] = out / name
    for name, plot in (("convergence.png", plot_convergence), ("residuals.png", plot_residuals)):
        if plot(summaries, out / name, title=title):
            files[name] = out / name
    if scaling:
        rows_s = json.loads(Path(scaling).read_text())
        files["scaling.png"] = plot_scaling(rows_s, out / "scaling.png", title=title)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        files = report(args.runs, args.out, args.labels, args.scaling, args.title)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"lpt-report: error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "summary.md").read_text())
    print("written: " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
