#!/usr/bin/env python
"""Run the paper presets serially and layer-parallel, report them, and print the README's figures.

For every preset and solver (``serial``, ``mgrit``) runs ``lpt-train +experiment=PRESET solver=SOLVER`` with the
budget below into ``RUNS/PRESET/SOLVER``, writes ``lpt-report`` of the pair into ``OUT/PRESET`` (summary.md,
summary.csv, loss/accuracy/residual plots) and ends with one Markdown table of all runs: steps, final
validation metric, wall time per step (after the first logged step, so without compilation), the ratio of
layer-parallel to serial time per step, and the mean MGRIT convergence factors — the figures of the README's
"Reproducing the papers" section.

Budgets. ``--budget preset`` runs every preset as it is configured (the papers' budgets: hours to days on a
CPU, meant for a GPU node or a cluster allocation). ``--budget cpu`` (the default) keeps each preset's
architecture, solver and optimiser and cuts only what a 2-core CPU cannot afford in a few minutes — the
training steps and, for the data-heavy presets, the training samples; the cuts are listed in ``CPU_BUDGET`` and
printed with every run. ``--steps K`` overrides the steps of every run (a smoke test).

    python scripts/reproduce_papers.py                         # all presets, CPU budgets
    python scripts/reproduce_papers.py peaks_lpl --budget preset
    python scripts/reproduce_papers.py --budget preset --launch "mpirun -np 4" parallel=mpi parallel.layers=4

Extra ``key=value`` arguments are passed to every ``lpt-train`` run.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("peaks_lpl", "peaks_1024", "indian_pines_512", "mnist_4096", "mnist_torchbraid", "regression_2048")
SOLVERS = ("serial", "mgrit")

CPU_BUDGET: dict[str, list[str]] = {
    # the preset's own budget (minutes on 2 cores)
    "peaks_lpl": [],
    # one of the 3 epochs (50 batches of 50 images of the preset's 2500)
    "mnist_torchbraid": ["train.steps=50", "train.eval_every=25"],
    # full-batch L-BFGS through 1024 layers on 5000 points: 20 of the 300 iterations
    "peaks_1024": ["train.steps=20", "train.eval_every=5"],
    # full-batch L-BFGS through 512 layers of width 200: 100 of the 4000 training pixels, 10 of 100 iterations
    # (the layer-parallel L-BFGS step holds about 13 GB at 100 pixels and grows by about 4 GB per 100 pixels)
    "indian_pines_512": ["dataset.n_train=100", "dataset.n_val=500", "train.steps=10", "train.eval_every=5"],
    # 4096 conv layers: 8 of the 2000 Adam steps (batch 16; one layer-parallel step takes about 90 s on 2 CPU
    # cores), validated on 200 test images
    "mnist_4096": ["train.steps=8", "train.eval_every=4", "dataset.n_val=200"],
    # 2048 layers, full batch: 100 of the 2000 Adam steps
    "regression_2048": ["train.steps=100", "train.eval_every=25"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="*", help=f"presets to run (default: all of {', '.join(PRESETS)})")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    p.add_argument("--budget", choices=("cpu", "preset"), default="cpu")
    p.add_argument("--steps", type=int, default=None, help="override the training steps of every run")
    p.add_argument("--runs", default="runs/papers", help="folder of the run directories")
    p.add_argument("--out", default="results/papers", help="folder of the reports")
    p.add_argument("--data-dir", default=None, help="data_dir for lpt-train (default: its own default)")
    p.add_argument("--launch", default="", help='launcher prefix, e.g. "mpirun -np 4"')
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default: none)")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a]
    if bad:
        p.error(f"unrecognised arguments {bad}: extra arguments must be lpt-train overrides key=value")
    args.overrides = extra
    unknown = [n for n in args.presets if n not in PRESETS]
    if unknown:
        p.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    args.presets = args.presets or list(PRESETS)
    return args


def overrides_for(preset: str, solver: str, args) -> list[str]:
    """The lpt-train arguments of one run."""
    out = [f"+experiment={preset}", f"solver={solver}"]
    if args.budget == "cpu":
        out += CPU_BUDGET[preset]
    if args.steps is not None:
        out += [f"train.steps={args.steps}", f"train.eval_every={max(1, args.steps // 2)}"]
    if args.data_dir:
        out.append(f"data_dir={args.data_dir}")
    return out + list(args.overrides)


def lpt_train_command() -> list[str]:
    exe = Path(sys.executable).with_name("lpt-train")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lpt.cli.train"]


def run_one(preset: str, solver: str, args) -> Path:
    run_dir = Path(args.runs) / preset / solver
    cmd = [*shlex.split(args.launch), *lpt_train_command(), *overrides_for(preset, solver, args),
           f"hydra.run.dir={run_dir}", "logging.progress=false", "resume=null"]
    print(f"[{preset} / {solver}] {' '.join(cmd)}", flush=True)
    if (run_dir / "run.h5").exists():  # a fresh run each time: the old log and checkpoint go
        for name in ("run.h5", "checkpoint.npz"):
            (run_dir / name).unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"[{preset} / {solver}] lpt-train failed with exit code {proc.returncode}")
    print(f"[{preset} / {solver}] done in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def fmt(value: float, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def figures_table(results: dict[str, dict[str, dict]]) -> str:
    """One Markdown row per preset and solver."""
    lines = ["| preset | solver | steps | validation | time / step | mgrit / serial | fwd factor | bwd factor |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for preset, by_solver in results.items():
        serial = by_solver.get("serial", {}).get("time_per_step_s", math.nan)
        for solver, row in by_solver.items():
            acc = row.get("final_val_acc", math.nan)
            metric = (f"acc {fmt(100 * acc, '.1f')} %" if not math.isnan(acc)
                      else f"mse {fmt(row.get('final_val_mse', math.nan), '.3g')}")
            ratio = row["time_per_step_s"] / serial if solver != "serial" and not math.isnan(serial) else math.nan
            lines.append(f"| {preset} | {solver} | {row['steps']} | {metric} | {fmt(row['time_per_step_s'], '.3g')} s"
                         f" | {fmt(ratio, '.1f')} | {fmt(row['fwd_factor_mean'], '.3f')} | "
                         f"{fmt(row['bwd_factor_mean'], '.3f')} |")
    return "\n".join(lines)


NUMERIC = ("time_per_step_s", "final_val_acc", "final_val_mse", "fwd_factor_mean", "bwd_factor_mean")


def read_reports(out: Path) -> dict[str, dict[str, dict]]:
    """The rows of every preset's report in ``out`` (``PRESET/summary.csv``), in the order of PRESETS: so the
    figures table holds the presets of earlier invocations too."""
    import csv

    results: dict[str, dict[str, dict]] = {}
    for preset in PRESETS:
        path = out / preset / "summary.csv"
        if not path.exists():
            continue
        with path.open() as f:
            rows = list(csv.DictReader(f))
        results[preset] = {r["run"]: {k: (int(v) if k == "steps" else float(v) if k in NUMERIC else v)
                                      for k, v in r.items()} for r in rows}
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    from lpt.cli.report import report

    out = Path(args.out)
    for preset in args.presets:
        if args.budget == "cpu" and CPU_BUDGET[preset]:
            print(f"[{preset}] CPU budget: {' '.join(CPU_BUDGET[preset])}", flush=True)
        dirs = [run_one(preset, solver, args) for solver in args.solvers]
        report([str(d) for d in dirs], str(out / preset), list(args.solvers), None, preset)
        print(figures_table({preset: read_reports(out)[preset]}), flush=True)
    table = figures_table(read_reports(out))
    (out / "figures.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwritten: {out / 'figures.md'} (every preset reported in {out}) and one report folder per preset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
