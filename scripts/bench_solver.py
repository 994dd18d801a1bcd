#!/usr/bin/env python
"""Benchmark the serial and the MGRIT solvers on one device, and check the work model of DESIGN §7.

Prints: serial forward and gradient times; MGRIT forward time per cycle; the one-shot training step
(``--iters`` forward / ``--bwd-iters`` adjoint cycles) against the serial value-and-gradient; the work model's
prediction of one cycle, work ≈ N((2 + nrelax)m − 1)/(m − 1) layer steps (N(2m−1)/(m−1) for F-relaxation,
N(3m−1)/(m−1) for FCF) times the measured cost of one layer step at the stacked batch size (N/m intervals ×
batch), with the ratio measured/predicted; and the peak memory. Times are medians over ``--repeats`` runs
after a warm-up (compilation excluded), each ended by ``block_until_ready``.

With ``--grid DxL`` the one-shot step is also timed on a D × L processor grid of devices (``parallel=mesh``;
on a CPU the devices are emulated, ``--xla_force_host_platform_device_count`` is set for you), with the ratio
to the one-device step.

Example:
    python scripts/bench_solver.py --depth 1024 --width 8 --batch 64 --cfactor 4 --levels 5 --layer dense
    python scripts/bench_solver.py --depth 1024 --grid 1x4
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from dataclasses import replace
from functools import partial
from typing import Callable


def _grid_from_argv(argv: list[str]) -> tuple[int, int] | None:
    """--grid DxL, read before jax is imported (the emulated device count must be set first)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--grid="):
            value = arg.split("=", 1)[1]
        else:
            value = argv[i + 1] if arg == "--grid" and i + 1 < len(argv) else None
        if value is not None:
            data, layers = (int(v) for v in value.lower().split("x"))
            return data, layers
    return None


_GRID = _grid_from_argv(sys.argv[1:])
if _GRID and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_GRID[0] * _GRID[1]}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=1024, help="number of residual layers N")
    parser.add_argument("--width", type=int, default=8, help="state width (dense) or channels (conv)")
    parser.add_argument("--image", type=int, default=8, help="image side for --layer conv")
    parser.add_argument("--batch", type=int, default=64, help="samples per batch")
    parser.add_argument("--layer", choices=("dense", "conv"), default="dense")
    parser.add_argument("--T", type=float, default=5.0, help="final time (h = T/N)")
    parser.add_argument("--cfactor", type=int, default=4, help="coarsening factor m")
    parser.add_argument("--levels", type=int, default=5, help="max_levels")
    parser.add_argument("--min-coarse", type=int, default=2, help="min_coarse")
    parser.add_argument("--nrelax", type=int, default=1, help="0 = F-relaxation, 1 = FCF")
    parser.add_argument("--cycle", choices=("V", "F", "FMG"), default="V")
    parser.add_argument("--iters", type=int, default=2, help="forward cycles (per training step)")
    parser.add_argument("--bwd-iters", type=int, default=1, help="adjoint cycles per training step")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None,
                        help="also time the one-shot step on a DATAxLAYERS device grid, e.g. 1x4")
    return parser.parse_args(argv)


def median_time(fn: Callable, *args, repeats: int) -> float:
    """Median wall time of fn(*args) in seconds, after one warm-up call (which compiles)."""
    from lpt.perfmodel.calibrate import wall_times

    return statistics.median(wall_times(fn, *args, repeats=repeats))


def peak_memory_mb() -> tuple[float, str]:
    """Peak device memory from jax's memory_stats where available, else the process's max RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def work_per_cycle(depth: int, m: int, nrelax: int) -> float:
    """Layer steps of one V-cycle over all levels (DESIGN §7): N((2 + nrelax)m − 1)/(m − 1)."""
    return depth * ((2 + nrelax) * m - 1) / (m - 1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from lpt.mgrit import MGRITOptions, MGRITSolver, mgrit_solve  # after the dtype switch
    from lpt.model import ResNet, propagate
    from lpt.perfmodel.calibrate import wall_times

    dtype = jnp.dtype(args.dtype)
    if args.layer == "conv":
        model = ResNet(input_shape=(args.image, args.image, 1), num_outputs=10, depth=args.depth,
                       width=args.width, T=args.T, layer="conv", opening="conv")
    else:
        model = ResNet(input_shape=(2,), num_outputs=5, depth=args.depth, width=args.width, T=args.T)
    key_p, key_x = jax.random.split(jax.random.PRNGKey(args.seed))
    params = model.init(key_p, dtype)
    x = jax.random.normal(key_x, (args.batch, *model.input_shape), dtype)
    labels = jnp.arange(args.batch) % model.num_outputs
    theta, y0 = params["layers"], model.open(params, x)
    hs = model.step_sizes(dtype)
    fwd = MGRITOptions(cfactor=args.cfactor, max_levels=args.levels, min_coarse=args.min_coarse,
                       nrelax=args.nrelax, cycle=args.cycle, max_iter=args.iters)
    r = args.repeats

    def objective(p):
        return model.data_loss(model.forward(p, x), labels) + model.regularization(p)

    t_fwd = median_time(jax.jit(partial(propagate, model.step)), theta, hs, y0, repeats=r)
    t_grad = median_time(jax.jit(jax.value_and_grad(objective)), params, repeats=r)

    # MGRIT forward: marginal cost of a cycle from a warm iterate (setup and initial guess excluded)
    u_init, _ = mgrit_solve(model.step, theta, hs, y0, fwd)

    def cycles(k: int) -> float:
        opts = replace(fwd, max_iter=k)
        return min(wall_times(lambda th, h, y, u: mgrit_solve(model.step, th, h, y, opts, u)[0],
                              theta, hs, y0, u_init, repeats=max(r, 3)))

    # a difference of two timings (minima, 3k cycles apart, so that load spikes and timer noise cancel): at
    # tiny sizes it can still be ≤ 0 (reported as not resolved)
    t_cycle = (cycles(4 * args.iters) - cycles(args.iters)) / (3 * args.iters)
    t_cold = median_time(lambda th, h, y: mgrit_solve(model.step, th, h, y, fwd)[0], theta, hs, y0, repeats=r)

    # one-shot training step (cold start: cheap coarse-level guess, as for minibatches)
    solver = MGRITSolver(fwd=fwd, bwd=replace(fwd, max_iter=args.bwd_iters), warm_start=False)
    step_fn = jax.jit(lambda p: solver.value_and_grad(model, p, x, labels, ())[:3])
    t_train = median_time(step_fn, params, repeats=r)

    # work model: one layer step at the stacked batch size (N/m intervals × batch)
    n_int = -(-args.depth // args.cfactor)
    stacked = jax.jit(jax.vmap(model.step))
    th_int = jax.tree_util.tree_map(lambda a: a[:n_int], theta)
    t_step = median_time(stacked, th_int, jnp.broadcast_to(y0, (n_int, *y0.shape)), hs[:n_int], repeats=r) / n_int
    work = work_per_cycle(args.depth, args.cfactor, args.nrelax)
    predicted = work * t_step
    grid_rows = grid_timing(args, model, params, x, labels, solver, t_train) if args.grid else []
    mem, mem_kind = peak_memory_mb()

    print(f"device: {jax.devices()[0].device_kind} | N={args.depth} width={args.width} batch={args.batch} "
          f"layer={args.layer} dtype={args.dtype} m={args.cfactor} levels={args.levels} nrelax={args.nrelax} "
          f"cycle={args.cycle}")
    rows = [
        ("serial forward", f"{1e3 * t_fwd:.3f} ms"),
        ("serial value+gradient", f"{1e3 * t_grad:.3f} ms"),
        (f"MGRIT forward, {args.iters} cycles, cold start", f"{1e3 * t_cold:.3f} ms"),
        ("MGRIT time per cycle (marginal)", f"{1e3 * t_cycle:.3f} ms" if t_cycle > 0 else
         "not resolved (below timer noise: use a larger problem)"),
        (f"one-shot step ({args.iters} fwd / {args.bwd_iters} bwd cycles)",
         f"{1e3 * t_train:.3f} ms (serial value+gradient / one-shot = {t_grad / t_train:.2f})"),
        (f"layer step at stacked batch {n_int}x{args.batch}", f"{1e6 * t_step:.3f} us"),
        ("work model per cycle", f"{work:.0f} layer steps -> {1e3 * predicted:.3f} ms predicted"),
        ("measured / predicted", f"{t_cycle / predicted:.2f}" if t_cycle > 0 else "n/a"),
        *grid_rows,
        (f"peak memory ({mem_kind})", f"{mem:.1f} MiB"),
    ]
    for label, value in rows:
        print(f"{label:<44} {value}")

def grid_timing(args, model, params, x, labels, solver, t_single: float) -> list[tuple[str, str]]:
    """The same one-shot step on a data × layers device mesh (shard_map), and its ratio to one device."""
    from lpt.parallel import ProcessorGrid
    from lpt.parallel.sharded import REPLICATED, SAMPLES, on_mesh

    data, layers = _GRID
    grid = ProcessorGrid("mesh", data=data, layers=layers)
    grid.check_resources()
    dist = replace(solver, comm=grid.comm())

    def local(p, xb, yb):
        obj, _, grads, _, _ = dist.value_and_grad(model, p, xb, yb, ())
        return jax.tree_util.tree_map(lambda a: dist.comm.data_sum(a) / data, (obj, grads))

    fn = jax.jit(on_mesh(local, grid, (REPLICATED, SAMPLES, SAMPLES), REPLICATED))
    t_grid = median_time(fn, params, x, labels, repeats=args.repeats)
    layout = dist.layouts(model.depth)[0]
    return [(f"one-shot step on grid {data}x{layers} (mesh)",
             f"{1e3 * t_grid:.3f} ms (one device / grid = {t_single / t_grid:.2f}; {layout.n_local} layers "
             f"per chunk, {layout.dist} chunked levels; {jax.devices()[0].platform} devices)")]


if __name__ == "__main__":
    main()
