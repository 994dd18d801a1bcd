#!/usr/bin/env python
"""Measured against predicted time per training step for the runs of a scaling sweep (scripts/scaling/sweep.py).

    python scripts/scaling/compare.py runs/scaling/strong --file results/perfmodel/calibration.json

For every run directory below the folder: the measured time per step (lpt.report.summary: wall time per step
after the first logged step) and the model's prediction for the run's own configuration (read from its log:
network, batch, solver, processor grid; the costs from the calibration file, per-rank costs of the profile
measured with as many processes when there is one). Prints a Markdown table with the ratio predicted/measured,
writes ``compare.json`` in the folder; ``lpt-report RUN… --scaling FOLDER/compare.json`` plots it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--file", default="results/perfmodel/calibration.json", help="calibration file")
    p.add_argument("--value-evals", type=float, default=0.0,
                   help="line-search evaluations (value and gradient) per step (L-BFGS)")
    args = p.parse_args(argv)
    from lpt.perfmodel import Calibration

    from lpt.perfmodel import CalibrationError

    try:
        cal = Calibration.load(args.file)
        rows = _rows(args, cal)
    except CalibrationError as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"compare.py: no run logs below {args.folder}", file=sys.stderr)
        return 2
    rows.sort(key=lambda r: (r["ranks"], r["depth"]))
    print("| P_layers | N | batch | measured [s/step] | predicted [s/step] | predicted/measured |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['ranks']} | {r['depth']} | {r['batch']} | {r['measured_s']:.4g} | {r['predicted_s']:.4g} | "
              f"{r['ratio']:.2f} |")
    out = Path(args.folder) / "compare.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"written {out}")
    return 0


def _rows(args, cal) -> list[dict]:
    import yaml

    from lpt.logging import LOG_NAME, read_run
    from lpt.perfmodel import Grid, PerfModel
    from lpt.perfmodel.config import network_from_config, profile_key_for, solver_options
    from lpt.report import summarize

    rows = []
    for log in sorted(Path(args.folder).rglob(LOG_NAME)):
        cfg = yaml.safe_load(read_run(log).attrs["config"])
        model, data, batch = network_from_config(cfg)
        full = batch == data.x_train.shape[0]
        fwd, bwd, warm = solver_options(cfg, full_batch=full)
        par = cfg["parallel"]
        ranks = par.get("data", 1) * par.get("layers", 1)
        backend = par.get("name", "single") if ranks > 1 else "single"
        key = profile_key_for(model, cfg.get("dtype", "float32"), ranks)
        if key not in cal.profiles:
            key = profile_key_for(model, cfg.get("dtype", "float32"), 1)
        perf = PerfModel(cal.profile(key), batch, cal.comm_costs(backend), value_evals=args.value_evals)
        grid = Grid(data=par.get("data", 1), layers=par.get("layers", 1), backend=backend)
        serial = cfg["solver"].get("name") != "mgrit"
        predicted = (perf.serial_step(model.depth) if serial
                     else perf.training_step(model.depth, fwd, bwd, grid, warm=warm))
        measured = summarize(log).row["time_per_step_s"]
        rows.append({"run": str(log.parent), "ranks": par.get("layers", 1), "data": par.get("data", 1),
                     "depth": model.depth, "batch": batch, "measured_s": measured, "predicted_s": predicted,
                     "ratio": predicted / measured, "serial_s": perf.serial_step(model.depth)})
    return rows


if __name__ == "__main__":
    sys.exit(main())
