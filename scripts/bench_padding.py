#!/usr/bin/env python
"""What an uneven depth costs: MGRIT's padding, counted by the performance model and timed, against the first depth.

For each depth: the padded fine depth, the steps the padding adds to all levels (``Layout.extra_work``), the
performance model's layer steps of one cycle and of one one-shot gradient on one rank, and the measured time of
one one-shot gradient (``--iters`` forward / ``--bwd-iters`` adjoint cycles, cold start, on one device; the minimum
of ``--repeats`` rounds after compilation, in which the depths take turns). Ratios are to the first depth, measured
in this run. With ``--layers P`` the layouts and counts on P layer chunks follow (counts only; the counts are
those of the largest chunk: ``stride`` fine layers on every chunk but the last, arrays of ``local`` steps).

Example:
    python scripts/bench_padding.py --depths 1024 1025 --layers 2 4
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import jax
import jax.numpy as jnp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[1024, 1025], help="depths N; ratios to the first")
    parser.add_argument("--width", type=int, default=8, help="state width (dense layers)")
    parser.add_argument("--batch", type=int, default=64, help="samples")
    parser.add_argument("--cfactor", type=int, default=4, help="coarsening factor m")
    parser.add_argument("--levels", type=int, default=6, help="max_levels")
    parser.add_argument("--min-coarse", type=int, default=2, help="min_coarse")
    parser.add_argument("--nrelax", type=int, default=1, help="0 = F-relaxation, 1 = FCF")
    parser.add_argument("--iters", type=int, default=2, help="forward cycles per gradient")
    parser.add_argument("--bwd-iters", type=int, default=1, help="adjoint cycles per gradient")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (minimum reported)")
    parser.add_argument("--layers", type=int, nargs="*", default=[], help="also count on these numbers of chunks")
    args = parser.parse_args(argv)
    for name in ("width", "batch", "cfactor", "levels", "repeats", "iters", "bwd_iters"):
        if getattr(args, name) < (2 if name == "cfactor" else 1):
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} is too small")
    if min(args.depths) < 1 or any(p < 1 for p in args.layers):
        parser.error("--depths and --layers take positive integers")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from lpt.mgrit import MGRITOptions, MGRITSolver
    from lpt.mgrit.layout import paired_layouts
    from lpt.model import ResNet
    from lpt.perfmodel.work import cycle_ops, gradient_ops

    fwd = MGRITOptions(cfactor=args.cfactor, max_levels=args.levels, min_coarse=args.min_coarse,
                       nrelax=args.nrelax, max_iter=args.iters)
    bwd = replace(fwd, max_iter=args.bwd_iters)
    solver = MGRITSolver(fwd=fwd, bwd=bwd, warm_start=False)
    print(f"device: {jax.devices()[0].device_kind} | dense width {args.width}, batch {args.batch}, float32, "
          f"m={args.cfactor} levels={args.levels} nrelax={args.nrelax}, {args.iters} fwd / {args.bwd_iters} bwd cycles")
    header = (f"{'N':>6} {'chunks':>6} {'padded':>7} {'chunked':>7} {'extra':>7} {'cycle work':>14} "
              f"{'gradient work':>15} {'stride':>6} {'local':>6}")
    rows, first = [], {}
    for chunks in [1, *args.layers]:
        for depth in args.depths:
            layout = paired_layouts(depth, fwd, bwd, chunks)[0]
            work = (cycle_ops(layout, fwd).work, gradient_ops(depth, fwd, bwd, chunks).work)
            base = first.setdefault(chunks, work)
            rows.append(f"{depth:>6} {chunks:>6} {layout.n_pad:>7} {layout.dist:>7} {100 * layout.extra_work:>6.1f}% "
                        f"{work[0]:>7.0f} ({work[0] / base[0]:.3f}) {work[1]:>8.0f} ({work[1] / base[1]:.3f}) "
                        f"{layout.stride:>6} {layout.n_local:>6}")
    print(header, *rows, sep="\n")

    steps = []
    for depth in args.depths:
        model = ResNet(input_shape=(2,), num_outputs=5, depth=depth, width=args.width, T=5.0)
        key_p, key_x = jax.random.split(jax.random.PRNGKey(0))
        params = model.init(key_p, jnp.float32)
        x = jax.random.normal(key_x, (args.batch, 2), jnp.float32)
        labels = jnp.arange(args.batch) % model.num_outputs
        step = jax.jit(lambda p, x, y, model=model: solver.value_and_grad(model, p, x, y, ())[:3])
        start = time.perf_counter()
        jax.block_until_ready(step(params, x, labels))  # compiles
        print(f"N = {depth:>6}: compiled in {time.perf_counter() - start:.1f} s", flush=True)
        steps.append((step, (params, x, labels)))
    # the depths take turns, round after round, so that the machine's drifts reach all of them alike
    best = [math.inf] * len(steps)
    for _ in range(args.repeats):
        for i, (step, inputs) in enumerate(steps):
            start = time.perf_counter()
            jax.block_until_ready(step(*inputs))
            best[i] = min(best[i], time.perf_counter() - start)
    for depth, t in zip(args.depths, best):
        print(f"N = {depth:>6}: one-shot gradient {1e3 * t:.2f} ms (measured / N = {args.depths[0]}: "
              f"{t / best[0]:.3f})")


if __name__ == "__main__":
    main()
