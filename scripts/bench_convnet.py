#!/usr/bin/env python
"""The conv ResNet of the speed issue: lpt's serial and layer-parallel gradients against plain JAX.

Network: TorchBraid's MNIST step (``conv2``: two k×k convolutions per layer), ``--channels`` channels,
``--image``² images, ``--batch`` samples, relu, N = ``--depths`` layers, float32. Printed in one run, per N:

- yardstick: a plain-JAX serial gradient a user would write — ``lax.scan`` over the stacked layers, each
  convolution as k·k shifted matrix products (``y_pad[:, i:i+H, j:j+W, :] @ K[i, j]``), ``jax.grad``;
- lpt serial: ``solver=serial`` (``model.forward`` + ``jax.value_and_grad``, ``model.conv_impl``);
- lpt layer-parallel: one one-shot gradient of :class:`lpt.mgrit.MGRITSolver` from the cold (coarse-level)
  start, cfactor 2, 3 levels, 1 forward + 1 adjoint cycle, F-relaxation on the finest level and FCF below,
  with and without ``skip_first_down``;
- the ratios lpt serial / yardstick (target ≤ 1.25) and layer-parallel / yardstick (target ≤ 2.5).

Under ``mpirun -np P ... --backend mpi`` the layer-parallel gradient runs on P layer ranks (every rank times
it; the slowest counts) and rank 0 also measures the one-rank figures for the speed-up. Times are minima of
``--repeats`` runs after a warm-up (compilation reported separately). Single-threaded by default
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``; pin with ``taskset``):

    taskset -c 0 python scripts/bench_convnet.py --depths 128 256
    mpirun --allow-run-as-root -np 2 python scripts/bench_convnet.py --depths 256 --backend mpi
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

if "--threads" not in " ".join(sys.argv) or "--threads one" in " ".join(sys.argv):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[128, 256])
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--conv-impl", default="auto", help="model.conv_impl of lpt's network: auto | matmul | xla")
    p.add_argument("--backend", choices=("single", "mpi"), default="single")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", choices=("both", "plain", "skip"), default="both",
                   help="layer-parallel gradients without / with skip_first_down")
    p.add_argument("--threads", choices=("one", "all"), default="one")
    return p.parse_args(argv)


class Timer:
    """Minimum of ``repeats`` runs after a warm-up; under MPI all ranks start together, the slowest counts."""

    def __init__(self, repeats, world=None):
        self.repeats, self.world = repeats, world

    def __call__(self, fn, *args):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first = time.perf_counter() - start
        times = []
        for _ in range(self.repeats):
            if self.world is not None:
                self.world.Barrier()
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            t = time.perf_counter() - start
            if self.world is not None:
                from mpi4py import MPI

                t = self.world.allreduce(t, op=MPI.MAX)
            times.append(t)
        return min(times), first - min(times)


def yardstick_gradient(model, k):
    """Plain JAX: scan over layers, each convolution as k·k shifted matmuls, ``jax.grad`` (no lpt code)."""
    p = k // 2

    def conv(w, b, y):
        h, wd = y.shape[1:3]
        yp = jnp.pad(y, ((0, 0), (p, p), (p, p), (0, 0)))
        out = sum(yp[:, i:i + h, j:j + wd, :] @ w[i, j] for i in range(k) for j in range(k))
        return out + b

    def loss(params, x, labels):
        y = jax.nn.relu(conv(params["opening"]["W"], params["opening"]["b"], x))
        h = model.h

        def body(y, th):
            z = jax.nn.relu(conv(th["K"], th["b"], y))
            return y + h * jax.nn.relu(conv(th["K2"], th["b2"], z)), None

        y, _ = jax.lax.scan(body, y, params["layers"])
        logits = y.reshape(y.shape[0], -1) @ params["classifier"]["W"].T + params["classifier"]["b"]
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0])

    return jax.jit(jax.value_and_grad(loss))


def main(argv=None):
    args = parse_args(argv)
    from lpt.mgrit import MGRITOptions, MGRITSolver
    from lpt.model import ResNet

    world, ranks, rank = None, 1, 0
    if args.backend == "mpi":
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        ranks, rank = world.Get_size(), world.Get_rank()
    timer = Timer(args.repeats, world)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"device: {jax.devices()[0].device_kind}, threads: {args.threads}, ranks: {ranks}; conv2 step, "
        f"{args.channels} channels, {args.image}x{args.image}, batch {args.batch}, kernel {args.kernel}, "
        f"conv_impl={args.conv_impl}; times in s (compile s)")
    for depth in args.depths:
        model = ResNet(input_shape=(args.image, args.image, 1), num_outputs=10, depth=depth, width=args.channels,
                       T=1.0, activation="relu", layer="conv2", opening="conv", kernel_size=args.kernel,
                       conv_impl=args.conv_impl)
        params = model.init(jax.random.PRNGKey(0))
        x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, *model.input_shape))
        labels = jnp.arange(args.batch) % 10
        rows = {}
        if rank == 0:
            rows["yardstick"] = timer.__class__(args.repeats)(yardstick_gradient(model, args.kernel), params, x, labels)
            serial = jax.jit(jax.value_and_grad(lambda p: model.data_loss(model.forward(p, x), labels)))
            rows["lpt serial"] = timer.__class__(args.repeats)(serial, params)
        opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, nrelax_fine=0, max_iter=1)
        variants = {"both": (False, True), "plain": (False,), "skip": (True,)}[args.variants]
        for skip in variants:
            o = replace(opts, skip_first_down=skip)
            solver = MGRITSolver(fwd=o, bwd=o, warm_start=False)
            grid_sizes = [1] + ([ranks] if ranks > 1 else [])
            for p in grid_sizes:
                if p > 1:
                    from lpt.parallel import ProcessorGrid
                    from lpt.parallel.comm import idle_barrier

                    idle_barrier(world)  # the other ranks sleep while rank 0 times alone
                    s = replace(solver, comm=ProcessorGrid("mpi", data=1, layers=p).comm())
                    t = timer(jax.jit(lambda prm: s.value_and_grad(model, prm, x, labels, ())[:3]), params)
                elif rank == 0:
                    t = Timer(args.repeats)(jax.jit(lambda prm: solver.value_and_grad(model, prm, x, labels, ())[:3]),
                                            params)
                else:
                    continue
                rows[f"layer-parallel{' skip' if skip else ''}, {p} rank{'s' if p > 1 else ''}"] = t
        if rank == 0:
            base = rows["yardstick"][0]
            say(f"N = {depth}")
            for name, (t, comp) in rows.items():
                say(f"  {name:<34} {t:8.3f} s ({comp:5.1f})   / yardstick {t / base:5.2f}")
            if ranks > 1:
                for skip in (" skip" if v else "" for v in variants):
                    one = rows[f"layer-parallel{skip}, 1 rank"][0]
                    many = rows[f"layer-parallel{skip}, {ranks} ranks"][0]
                    say(f"  speed-up layer-parallel{skip} {ranks} ranks / 1 rank: {one / many:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
