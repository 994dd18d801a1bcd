#!/usr/bin/env python
"""Weak and strong scaling sweeps of layer-parallel training, run through lpt-train (DESIGN §7).

    python scripts/scaling/sweep.py strong +experiment=peaks_1024 --ranks 1,2 --steps 20
    python scripts/scaling/sweep.py weak   +experiment=peaks_1024 --ranks 1,2 --layers-per-rank 256 --steps 20
    python scripts/scaling/sweep.py strong +experiment=peaks_1024 --ranks 1,2,4,8,16 --launcher slurm

strong: N fixed (model.depth of the overrides), P_layers = each of --ranks; weak: N = layers-per-rank × P.
Every point is one run of ``lpt-train <overrides> parallel=mpi parallel.layers=P model.depth=N train.steps=S``
in ``OUT/P<P>_N<N>``:

* ``--launcher local`` (default): ``mpirun -np P lpt-train …`` one point after the other on this machine
  (``--mpirun`` sets the launcher command, e.g. "mpirun --allow-run-as-root --oversubscribe");
* ``--launcher slurm``: one Hydra multirun over the points with the SLURM launcher
  (``lpt-train -m hydra/launcher=slurm parallel.layers=1,2,4 …``; configs/hydra/launcher/slurm.yaml), each
  point a SLURM job with P tasks. For weak scaling, where N changes with P, one multirun per point.

Then ``python scripts/scaling/compare.py OUT`` compares the measured time per step with the model's prediction.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("weak", "strong"))
    p.add_argument("overrides", nargs="*", help="lpt-train overrides, e.g. +experiment=peaks_1024")
    p.add_argument("--ranks", type=int_list, default=[1, 2], help="layer ranks, comma-separated")
    p.add_argument("--layers-per-rank", type=int, default=256, help="weak scaling: N / P")
    p.add_argument("--steps", type=int, default=20, help="training steps per point")
    p.add_argument("--out", default=None, help="output folder (default runs/scaling/<kind>)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--mpirun", default="mpirun --allow-run-as-root --oversubscribe", help="local MPI launcher")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p.parse_args(argv)


def points(kind: str, ranks: list[int], depth: int, per_rank: int) -> list[tuple[int, int]]:
    """(P, N) of every point."""
    return [(p, depth if kind == "strong" else per_rank * p) for p in ranks]


def main(argv=None) -> int:
    args = parse_args(argv)
    from lpt.cli.compose import compose_config

    depth = compose_config(args.overrides)["model"]["depth"]
    out = Path(args.out or f"runs/scaling/{args.kind}")
    common = [*args.overrides, "parallel=mpi", f"train.steps={args.steps}", f"train.eval_every={args.steps}",
              f"train.checkpoint_every={args.steps}", "logging.progress=false"]
    lpt_train = str(Path(sys.executable).with_name("lpt-train"))
    commands = []
    pts = points(args.kind, args.ranks, depth, args.layers_per_rank)
    if args.launcher == "local":
        for p, n in pts:
            run_dir = out / f"P{p}_N{n}"
            commands.append([*shlex.split(args.mpirun), "-np", str(p), lpt_train, *common,
                             f"parallel.layers={p}", f"model.depth={n}", f"hydra.run.dir={run_dir}"])
    else:
        groups = [(args.ranks, depth)] if args.kind == "strong" else [([p], n) for p, n in pts]
        for ranks, n in groups:
            commands.append([lpt_train, "-m", "hydra/launcher=slurm", *common,
                             f"parallel.layers={','.join(map(str, ranks))}", f"model.depth={n}",
                             f"hydra.sweep.dir={out}", "hydra.sweep.subdir=P${parallel.layers}_N${model.depth}"])
    for cmd in commands:
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
            if rc != 0:
                print(f"sweep.py: point failed with exit status {rc}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
