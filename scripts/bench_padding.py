#!/usr/bin/env python
"""What an uneven depth costs: MGRIT's padding, counted by the performance model and timed, against the first depth.

For each depth: the padded fine depth, the steps the padding adds to all levels (``Layout.extra_work``), the
performance model's layer steps of one cycle and of one one-shot gradient on one rank, and the measured time of
one one-shot gradient (``--iters`` forward / ``--bwd-iters`` adjoint cycles, cold start, on one device; the minimum
of ``--repeats`` rounds after compilation, in which the depths take turns). Ratios are to the first depth, measured
in this run. With ``--layers P`` the layouts and counts on P layer chunks follow (counts only; the counts are
those of the largest chunk: ``stride`` fine layers on every chunk but the last, arrays of ``local`` steps; ``chunk
extra``, ``Layout.extra_work_per_chunk``, is how many more steps per sweep of all levels the largest chunk relaxes
than the real steps split evenly, the figure the run's start line gives).
With ``--time-chunks P`` the gradient is also timed on P layer chunks: a "layers" mesh of P emulated CPU devices
(``lpt.layer_parallel``'s ``one_shot`` under ``jax.grad``, the same cycles), one thread per device — give the
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


def chunk_steps(args: argparse.Namespace, fwd, bwd) -> list:
    """One-shot gradients of a dense residual net (width ``--width``) by ``lpt.layer_parallel`` on a "layers" mesh
    of ``--time-chunks`` devices, one per depth."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lpt

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[: args.time_chunks]), ("layers",))
    step = lpt.residual(lambda theta, y: jnp.tanh(y @ theta["w"] + theta["b"]))
    lp = lpt.layer_parallel(step, lpt.LayerParallelOptions(T=5.0, forward=fwd, backward=bwd, mesh=mesh,
                                                          one_shot_cycles=(args.iters, args.bwd_iters)))
    grad = jax.jit(jax.grad(lambda p, y0: jnp.sum(lp.one_shot(p, y0, None) ** 2)))
    out = []
    for depth in args.depths:
        key_w, key_y = jax.random.split(jax.random.PRNGKey(depth))
        params = {"w": jax.random.normal(key_w, (depth, args.width, args.width)) / np.sqrt(args.width),
                  "b": jnp.zeros((depth, args.width))}
        y0 = jax.random.normal(key_y, (args.batch, args.width))
        out.append(compiled(grad, (params, y0), f"N = {depth:>6} on {args.time_chunks} chunks"))
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.time_chunks > 1:  # emulated devices must be asked for before jax starts
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                   f"--xla_force_host_platform_device_count={args.time_chunks}")
    import jax
    import jax.numpy as jnp

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
              f"{'gradient work':>15} {'stride':>6} {'local':>6} {'chunk extra':>11}")
    rows, first = [], {}
    for chunks in [1, *args.layers]:
        for depth in args.depths:
            layout = paired_layouts(depth, fwd, bwd, chunks)[0]
            work = (cycle_ops(layout, fwd).work, gradient_ops(depth, fwd, bwd, chunks).work)
            base = first.setdefault(chunks, work)
            rows.append(f"{depth:>6} {chunks:>6} {layout.n_pad:>7} {layout.dist:>7} {100 * layout.extra_work:>6.1f}% "
                        f"{work[0]:>7.0f} ({work[0] / base[0]:.3f}) {work[1]:>8.0f} ({work[1] / base[1]:.3f}) "
                        f"{layout.stride:>6} {layout.n_local:>6} {100 * layout.extra_work_per_chunk:>10.1f}%")
    print(header, *rows, sep="\n")

    steps = []
    for depth in args.depths:
        model = ResNet(input_shape=(2,), num_outputs=5, depth=depth, width=args.width, T=5.0)
        key_p, key_x = jax.random.split(jax.random.PRNGKey(0))
        params = model.init(key_p, jnp.float32)
        x = jax.random.normal(key_x, (args.batch, 2), jnp.float32)
        labels = jnp.arange(args.batch) % model.num_outputs
        step = jax.jit(lambda p, x, y, model=model: solver.value_and_grad(model, p, x, y, ())[:3])
        steps.append(compiled(step, (params, x, labels), f"N = {depth:>6}"))
    best = timed(steps, args.repeats)
    for depth, t in zip(args.depths, best):
        print(f"N = {depth:>6}: one-shot gradient {1e3 * t:.2f} ms (measured / N = {args.depths[0]}: "
              f"{t / best[0]:.3f})")
    if args.time_chunks:
        best = timed(chunk_steps(args, fwd, bwd), args.repeats)
        for depth, t in zip(args.depths, best):
            print(f"N = {depth:>6}: one-shot gradient on {args.time_chunks} chunks {1e3 * t:.2f} ms "
                  f"(measured / N = {args.depths[0]}: {t / best[0]:.3f})")

if __name__ == "__main__":
    main()
