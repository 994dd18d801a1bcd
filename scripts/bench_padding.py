#!/usr/bin/env python
"""What an uneven depth costs: MGRIT's padding, counted by the performance model and timed, against the first depth.

For each depth: the layers MGRIT solves and the serial tail after them (``lpt.mgrit.layout.serial_tail``: 1 of
N = 1025, the first 1024 by MGRIT), the padded fine depth, the steps the padding adds to all levels
(``Layout.extra_work``), the
performance model's layer steps of one cycle and of one one-shot gradient on one rank, and the measured time of
one one-shot gradient (``--iters`` forward / ``--bwd-iters`` adjoint cycles, cold start, on one device; the minimum
of ``--repeats`` rounds after compilation, in which the depths take turns). Ratios are to the first depth, measured
in this run. With ``--layers P`` the layouts and counts on P layer chunks follow (counts only; the counts are
those of the largest chunk: ``stride`` fine layers on every chunk but the last, arrays of ``local`` steps; ``chunk
extra``, ``Layout.extra_work_per_chunk``, is how many more steps per sweep of all levels the largest chunk relaxes
than the real steps split evenly, the figure the run's start line gives).
With ``--time-chunks P`` the gradient is also timed on P layer chunks: a "layers" mesh of P emulated CPU devices
(the training solver, ``MGRITSolver``, under ``shard_map``, the same cycles), one thread per device — give the
process P cores (``taskset -c 0-(P−1)``) and ``--xla_cpu_multi_thread_eigen=false``.

Example:
    python scripts/bench_padding.py --depths 1024 1025 --layers 2 4
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0,1 python scripts/bench_padding.py --time-chunks 2
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace


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
    parser.add_argument("--time-chunks", type=int, default=0,
                        help="also time the gradient on this many layer chunks (emulated devices); 0: no")
    args = parser.parse_args(argv)
    for name in ("width", "batch", "cfactor", "levels", "repeats", "iters", "bwd_iters"):
        if getattr(args, name) < (2 if name == "cfactor" else 1):
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} is too small")
    if min(args.depths) < 1 or any(p < 1 for p in args.layers) or args.time_chunks < 0:
        parser.error("--depths and --layers take positive integers, --time-chunks an integer ≥ 0")
    return args


def timed(steps: list, repeats: int) -> list[float]:
    """The minimum time of each compiled ``(step, inputs)`` over ``repeats`` rounds in which the steps take turns,
    so that the machine's drifts reach all of them alike."""
    import jax

    best = [math.inf] * len(steps)
    for _ in range(repeats):
        for i, (step, inputs) in enumerate(steps):
            start = time.perf_counter()
            jax.block_until_ready(step(*inputs))
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def compiled(step, inputs, label: str):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(step(*inputs))
    print(f"{label}: compiled in {time.perf_counter() - start:.1f} s", flush=True)
    return step, inputs


def problem(args: argparse.Namespace, depth: int):
    """The dense residual net of one depth (width ``--width``), its parameters, inputs and labels (float32)."""
    import jax
    import jax.numpy as jnp

    from lpt.model import ResNet

    model = ResNet(input_shape=(2,), num_outputs=5, depth=depth, width=args.width, T=5.0)
    key_p, key_x = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(key_x, (args.batch, 2), jnp.float32)
    return model, (model.init(key_p, jnp.float32), x, jnp.arange(args.batch) % model.num_outputs)


def chunk_steps(args: argparse.Namespace, solver) -> list:
    """One-shot gradients of the training solver on a "layers" mesh of ``--time-chunks`` devices, one per depth."""
    import dataclasses

    import jax

    from lpt.parallel import ProcessorGrid
    from lpt.parallel.sharded import REPLICATED, on_mesh

    grid = ProcessorGrid("mesh", layers=args.time_chunks)
    solver = dataclasses.replace(solver, comm=grid.comm())
    out = []
    for depth in args.depths:
        model, inputs = problem(args, depth)
        local = lambda p, x, y, model=model: solver.value_and_grad(model, p, x, y, ())[:3:2]  # noqa: E731
        step = jax.jit(on_mesh(local, grid, (REPLICATED,) * 3, (REPLICATED, REPLICATED)))
        out.append(compiled(step, inputs, f"N = {depth:>6} on {args.time_chunks} chunks"))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.time_chunks > 1:  # emulated devices must be asked for before jax starts
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                   f"--xla_force_host_platform_device_count={args.time_chunks}")
    import jax

    from lpt.mgrit import MGRITOptions, MGRITSolver
    from lpt.mgrit.layout import paired_layouts
    from lpt.perfmodel.work import cycle_ops, gradient_ops

    fwd = MGRITOptions(cfactor=args.cfactor, max_levels=args.levels, min_coarse=args.min_coarse,
                       nrelax=args.nrelax, max_iter=args.iters)
    bwd = replace(fwd, max_iter=args.bwd_iters)
    solver = MGRITSolver(fwd=fwd, bwd=bwd, warm_start=False)
    print(f"device: {jax.devices()[0].device_kind} | dense width {args.width}, batch {args.batch}, float32, "
          f"m={args.cfactor} levels={args.levels} nrelax={args.nrelax}, {args.iters} fwd / {args.bwd_iters} bwd cycles")
    header = (f"{'N':>6} {'chunks':>6} {'mgrit':>6} {'tail':>4} {'padded':>7} {'chunked':>7} {'extra':>7} "
              f"{'cycle work':>14} {'gradient work':>15} {'stride':>6} {'local':>6} {'chunk extra':>11}")
    rows, first = [], {}
    for chunks in [1, *args.layers]:
        for depth in args.depths:
            layout = paired_layouts(depth, fwd, bwd, chunks, tail=True)[0]
            work = (cycle_ops(layout, fwd).work, gradient_ops(depth, fwd, bwd, chunks).work)
            base = first.setdefault(chunks, work)
            rows.append(f"{depth:>6} {chunks:>6} {layout.n:>6} {layout.tail:>4} {layout.n_pad:>7} {layout.dist:>7} "
                        f"{100 * layout.extra_work:>6.1f}% "
                        f"{work[0]:>7.0f} ({work[0] / base[0]:.3f}) {work[1]:>8.0f} ({work[1] / base[1]:.3f}) "
                        f"{layout.stride:>6} {layout.n_local:>6} {100 * layout.extra_work_per_chunk:>10.1f}%")
    print(header, *rows, sep="\n")

    steps = []
    for depth in args.depths:
        model, inputs = problem(args, depth)
        step = jax.jit(lambda p, x, y, model=model: solver.value_and_grad(model, p, x, y, ())[:3])
        steps.append(compiled(step, inputs, f"N = {depth:>6}"))
    best = timed(steps, args.repeats)
    for depth, t in zip(args.depths, best):
        print(f"N = {depth:>6}: one-shot gradient {1e3 * t:.2f} ms (measured / N = {args.depths[0]}: "
              f"{t / best[0]:.3f})")
    if args.time_chunks:
        best = timed(chunk_steps(args, solver), args.repeats)
        for depth, t in zip(args.depths, best):
            print(f"N = {depth:>6}: one-shot gradient on {args.time_chunks} chunks {1e3 * t:.2f} ms "
                  f"(measured / N = {args.depths[0]}: {t / best[0]:.3f})")

if __name__ == "__main__":
    main()
