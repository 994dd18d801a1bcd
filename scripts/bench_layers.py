#!/usr/bin/env python
"""Per layer step, forward + backward: serial propagation vs the MGRIT relaxation, dense / conv / conv2.

For each layer kind, size and convolution formulation (``--impls``: matmul, xla) it prints, in one run:

- serial: lpt's serial gradient (``lax.scan`` over N = m·n_c layers, ``jax.grad``) per layer step;
- relaxation: an F-relaxation of the forward system (:func:`lpt.mgrit.relax.f_sweep`: a scan over the m
  positions, the step vectorised over the n_c intervals) plus an F-relaxation of the adjoint system with its
  linearised steps (built as the adjoint solver builds them), per layer step, with the intervals vectorised
  all at once (``interval_batch=0``, one ``vmap``) and as ``solver.interval_batch=auto`` does;
- the ratios relaxation / serial (the target is ≤ 1.5);
- a large matrix product as the machine's throughput yardstick (GFLOP/s).

Times are minima over ``--repeats`` runs after a warm-up (compilation reported separately, in seconds).
Run single-threaded for comparable figures (one core; this script sets
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` unless ``--threads all``), e.g.

    taskset -c 0 python scripts/bench_layers.py
    python scripts/bench_layers.py --quick            # small sizes (smoke test)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--threads" not in " ".join(sys.argv) or "--threads one" in " ".join(sys.argv):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lpt.mgrit.adjoint import apply_vjp, linearize  # noqa: E402
from lpt.mgrit.batching import nbytes, over_steps, resolve_batch  # noqa: E402
from lpt.mgrit.hierarchy import Level  # noqa: E402
from lpt.mgrit.relax import f_sweep  # noqa: E402
from lpt.model import ResNet, propagate  # noqa: E402

# (kind, width/channels, batch, image side)
FULL = [("dense", 8, 5000, 0), ("dense", 64, 256, 0), ("conv", 4, 64, 28), ("conv", 8, 10, 32),
        ("conv2", 8, 10, 32), ("conv2", 16, 10, 32)]
QUICK = [("dense", 8, 64, 0), ("conv2", 4, 4, 8)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intervals", type=int, default=64, help="n_c, intervals relaxed at once")
    p.add_argument("--cfactor", type=int, default=2, help="m, steps per interval (N = m·n_c layers)")
    p.add_argument("--impls", default="matmul,xla", help="convolution formulations to compare")
    p.add_argument("--layouts", default="NHWC,CNHW", help="conv state layouts to compare (model.conv_layout)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--threads", choices=("one", "all"), default="one")
    return p.parse_args(argv)


def best(fn, *args, repeats):
    """(minimum run time, first call time incl. compilation) in seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times), first


def make_model(kind, width, image, depth, impl, layout="auto"):
    if kind == "dense":
        return ResNet(input_shape=(2,), num_outputs=5, depth=depth, width=width, T=1.0, activation="tanh")
    return ResNet(input_shape=(image, image, 1), num_outputs=10, depth=depth, width=width, T=1.0,
                  activation="relu", layer=kind, opening="conv", conv_impl=impl, conv_layout=layout)


def measure(kind, width, batch, image, impl, layout, args):
    m, n_c = args.cfactor, args.intervals
    n = m * n_c
    model = make_model(kind, width, image, n, impl, layout)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *model.input_shape))
    y0 = model.open(params, x)
    theta, hs = params["layers"], model.step_sizes(y0.dtype)
    r = args.repeats

    serial = jax.jit(jax.grad(lambda th, y: jnp.sum(propagate(model.step, th, hs, y)), argnums=(0, 1)))
    t_serial, c_serial = best(serial, theta, y0, repeats=r)

    # one level in step layout (m, n_c, …), C-points (n_c+1, …), primal states at every step
    def by_interval(a):
        return jnp.swapaxes(a.reshape(n_c, m, *a.shape[1:]), 0, 1)

    level = Level(jax.tree_util.tree_map(by_interval, theta), by_interval(hs))
    c = jnp.broadcast_to(y0, (n_c + 1, *y0.shape)) + 0.0
    ys = jnp.broadcast_to(y0, (m, n_c, *y0.shape)) + 0.0
    out = {}
    for label, batch_spec in (("vmap", 0), ("auto", "auto")):
        def relax(level, c, ys, spec=batch_spec):
            grid, chat = f_sweep(model.step, level, c, None, spec)  # forward F-relaxation
            lin = over_steps(lambda th, y, h: linearize(model.step, th, y, h), spec, y0, 2)(
                level.data, ys, level.hs)
            adj, achat = f_sweep(apply_vjp, Level(lin, level.hs), grid.c, None, spec)  # adjoint F-relaxation
            return grid.f, chat, adj.f, achat

        t, comp = best(jax.jit(relax), level, c, ys, repeats=r)
        out[label] = (t / n, comp)
    auto_batch = resolve_batch("auto", n_c, nbytes(y0), image=model.is_conv)
    return t_serial / n, c_serial, out, auto_batch


def matmul_yardstick(repeats):
    a = jnp.ones((2048, 2048), jnp.float32)
    t, _ = best(jax.jit(lambda a: a @ a), a, repeats=repeats)
    return 2 * 2048**3 / t / 1e9


def main(argv=None):
    args = parse_args(argv)
    cases = QUICK if args.quick else FULL
    impls = [s for s in args.impls.split(",") if s]
    layouts = [s for s in args.layouts.split(",") if s]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), threads: {args.threads}, "
          f"m = {args.cfactor}, n_c = {args.intervals} intervals (N = {args.cfactor * args.intervals} layers)")
    print(f"throughput yardstick: 2048x2048 matmul, float32: {matmul_yardstick(args.repeats):.1f} GFLOP/s")
    print("per layer step, forward + backward, ms (compile s); ratio = relaxation / serial (target <= 1.5)")
    header = f"{'layer':<6} {'width':>5} {'batch':>5} {'image':>5} {'impl':<7} {'layout':<6} {'serial':>14} " \
             f"{'relax vmap':>14} {'relax auto':>14} {'batch':>5} {'vmap/ser':>8} {'auto/ser':>8}"
    print(header)
    for kind, width, batch, image in cases:
        conv = kind != "dense"
        for impl, layout in [(i, lay) for i in impls for lay in layouts] if conv else [(impls[0], "-")]:
            t_ser, c_ser, out, auto_batch = measure(kind, width, batch, image, impl, layout, args)
            (t_v, c_v), (t_a, c_a) = out["vmap"], out["auto"]
            print(f"{kind:<6} {width:>5} {batch:>5} {image or '-':>5} {impl if conv else '-':<7} {layout:<6} "
                  f"{1e3 * t_ser:>7.3f} ({c_ser:4.1f}) {1e3 * t_v:>7.3f} ({c_v:4.1f}) {1e3 * t_a:>7.3f} "
                  f"({c_a:4.1f}) {auto_batch:>5} {t_v / t_ser:>8.2f} {t_a / t_ser:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
