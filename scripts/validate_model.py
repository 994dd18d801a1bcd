#!/usr/bin/env python
"""Check the performance model against measurements: predicted / measured time of one gradient evaluation.

For every depth N, measures on this machine (minimum of ``--repeats`` runs after a warm-up, compilation
excluded) and predicts with :mod:`lpt.perfmodel`:

- serial: ``jax.value_and_grad`` of the serial network (``lax.scan``), one device;
- mgrit: one one-shot layer-parallel gradient (:class:`lpt.mgrit.MGRITSolver.value_and_grad`: forward and
  adjoint MGRIT with the configured cycles, layer gradient), cold start (cheap coarse-level guess) unless
  ``--warm``; on one device (``single``), or under ``mpirun -np P`` on P ranks (``mpi``, P_layers = P: the
  layer chunks of :mod:`lpt.parallel`), timed on all ranks at once (the slowest rank counts).

and prints the ratio predicted/measured. The network and solver come from ``lpt-train`` overrides (default:
the strong-scaling peaks problem ``+experiment=peaks_1024``, full batch of 5000 points). The costs are read
from the calibration file, or measured first (``--calibrate``; under mpirun all ranks measure at once, so
the profile holds the per-rank costs when P processes share the machine).

    python scripts/validate_model.py --calibrate --depths 256 1024
    mpirun --allow-run-as-root --oversubscribe -np 2 python scripts/validate_model.py --calibrate --backend mpi
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="lpt-train overrides (default: +experiment=peaks_1024)")
    p.add_argument("--depths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--backend", choices=("single", "mpi"), default="single")
    p.add_argument("--file", default="results/perfmodel/calibration.json", help="calibration file")
    p.add_argument("--calibrate", action="store_true", help="measure the costs first (and store them)")
    p.add_argument("--comm", action="store_true", help="(mpi) measure the message costs α, β, σ₀, κ again")
    p.add_argument("--warm", action="store_true", help="warm-started solves (full-batch training)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (MPI message costs too)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from lpt.cli.compose import compose_config
    from lpt.mgrit import MGRITSolver
    from lpt.perfmodel import Calibration, Grid, PerfModel
    from lpt.perfmodel.calibrate import calibrate_profile, best_time
    from lpt.perfmodel.config import network_from_config, profile_key_for
    from lpt.train import objective

    world, rank, ranks = None, 0, 1
    if args.backend == "mpi":
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        rank, ranks = world.Get_rank(), world.Get_size()
    say = print if rank == 0 else (lambda *a, **k: None)

    overrides = args.overrides or ["+experiment=peaks_1024"]
    cfg = compose_config(overrides)
    model, data, batch = network_from_config(cfg)
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    procs = ranks if args.backend == "mpi" else 1
    key = profile_key_for(model, dtype, procs)

    cal = Calibration.load_or_new(args.file)
    if args.calibrate or key not in cal.profiles:
        say(f"calibrating {key} at batch {batch} ({procs} process(es) measuring at once) ...")
        if world is not None:
            world.Barrier()
        profile = calibrate_profile(model, batch // 1, max(args.depths), dtype=dtype, repeats=args.repeats, log=say,
                                    procs=procs)
        if rank == 0:
            cal.profiles[profile.key] = profile
            cal.save(args.file)
    if args.backend == "mpi" and ranks > 1 and (args.calibrate or args.comm or "mpi" not in cal.comm):
        from lpt.perfmodel.comm import measure

        comm_costs, _ = measure("mpi", repeats=args.repeats)
        if rank == 0:
            cal.comm["mpi"] = comm_costs
            cal.save(args.file)
            say(f"mpi messages: alpha {comm_costs.alpha * 1e6:.2f} us, beta {comm_costs.beta * 1e9:.4f} ns/B, "
                f"sync {comm_costs.sync * 1e3:.3f} ms, imbalance {comm_costs.imbalance:.3f}")
    if world is not None:
        world.Barrier()
        cal = Calibration.load(args.file)
    backend = args.backend if ranks > 1 else "single"
    perf = PerfModel(cal.profile(key), batch, cal.comm_costs(backend))
    grid = Grid(layers=ranks, backend=backend)

    x = jnp.asarray(data.x_train[:batch], dtype)
    y = jnp.asarray(data.y_train[:batch], dtype if data.task == "regression" else jnp.int32)
    rows = []
    for depth in args.depths:
        from dataclasses import replace

        net = replace(model, depth=depth)
        params = net.init(jax.random.PRNGKey(0), dtype)
        solver = MGRITSolver.from_config(cfg["solver"] if cfg["solver"].get("name") == "mgrit"
                                         else {"name": "mgrit"}, full_batch=False)
        solver = replace(solver, warm_start=args.warm)
        if world is not None and ranks > 1:
            from lpt.parallel import ProcessorGrid

            solver = replace(solver, comm=ProcessorGrid("mpi", data=1, layers=ranks).comm())
        state = solver.init_state(net, params, x)

        grad = jax.jit(lambda p, s: solver.value_and_grad(net, p, x, y, s)[:3])
        if args.warm:  # a state from one step, as in training
            state = jax.jit(lambda p, s: solver.value_and_grad(net, p, x, y, s)[3])(params, state)
        t_mgrit = _timed(grad, params, state, repeats=args.repeats, world=world)
        p_mgrit = perf.gradient(depth, solver.fwd, solver.bwd, grid, warm=args.warm)
        row = {"backend": args.backend, "ranks": ranks, "depth": depth, "batch": batch,
               "mgrit_measured_s": t_mgrit, "mgrit_predicted_s": p_mgrit, "mgrit_ratio": p_mgrit / t_mgrit}
        if rank == 0 and ranks == 1:
            serial = jax.jit(jax.value_and_grad(lambda p: objective(net, p, x, y)[0]))
            t_serial = best_time(serial, params, repeats=args.repeats)
            p_serial = perf.serial_gradient(depth)
            row.update(serial_measured_s=t_serial, serial_predicted_s=p_serial, serial_ratio=p_serial / t_serial)
        rows.append(row)
        say(_format(row))
    if rank == 0:
        ok = all(0.75 <= r[k] <= 1.25 for r in rows for k in ("mgrit_ratio", "serial_ratio") if k in r)
        say(f"all ratios within 25 %: {'yes' if ok else 'NO'}")
        if args.json:
            os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


def _timed(fn, *args, repeats: int, world=None) -> float:
    """Minimum time of fn(*args) after a warm-up; under MPI all ranks start together and the slowest counts."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        if world is not None:
            world.Barrier()
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t = time.perf_counter() - start
        if world is not None:
            from mpi4py import MPI

            t = world.allreduce(t, op=MPI.MAX)
        times.append(t)
    return min(times)


def _format(row: dict) -> str:
    s = (f"{row['backend']:>6} P={row['ranks']} N={row['depth']:5d} B={row['batch']}: mgrit gradient measured "
         f"{row['mgrit_measured_s'] * 1e3:9.1f} ms, predicted {row['mgrit_predicted_s'] * 1e3:9.1f} ms, "
         f"predicted/measured {row['mgrit_ratio']:.2f}")
    if "serial_ratio" in row:
        s += (f" | serial gradient measured {row['serial_measured_s'] * 1e3:8.1f} ms, predicted "
              f"{row['serial_predicted_s'] * 1e3:8.1f} ms, predicted/measured {row['serial_ratio']:.2f}")
    return s


if __name__ == "__main__":
    sys.exit(main())
