#!/usr/bin/env python
"""Gradient time of a ResNet and of its parareal networks (Lee, Park, Lee), split like the paper's timing table.

For N_p ∈ {1, 3, 6, 12} (``--num-parallel``) the parareal network

    z_1 = g^1(C^1 x),  z_{j+1} = g^{j+1}(C^{j+1} x) + F^j(z_j) − F^j(C^{j+1} x),  output = h(z_{N_p})

is timed in four parts, each as one jitted forward + backward (``jax.vjp`` with a fixed random cotangent):

- pre:      the preprocessing C^1 x, …, C^{N_p} x,
- parallel: all subnetworks g^j(C^j x) at once (vmap over j of a scan over units),
- coarse:   the coarse networks, F^j(C^{j+1} x) at once and the serial chain z_j → z_{j+1},
- post:     the head and the loss,

plus ``1 subnet`` (one g^j alone: the parallel part's time with one device per subnetwork), ``total`` (the
whole gradient, one jitted ``jax.grad``) and ``ideal`` = pre + 1 subnet + coarse + post (the critical path with
N_p devices, communication not counted). The original ResNet's gradient is the reference. Times are the median
of ``--repeats`` calls after a warm-up call (compilation excluded), with ``block_until_ready``.

On one device the parallel part does the same work as the original stack, so ``total`` is at least the
original time plus the coarse networks; ``ideal`` shows what spreading the subnetworks over devices would give.

Example::

    python scripts/bench_parareal.py                       # conv, MNIST-shaped inputs, N = 48, 4 channels
    python scripts/bench_parareal.py --layer dense --input-shape 784 --width 32 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from lpt.model import ResNet
from lpt.model.parareal import ParaRealNet
from lpt.model.propagate import propagate

PARTS = ("pre", "parallel", "1 subnet", "coarse", "post", "total", "ideal")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layer", choices=("conv", "dense"), default="conv", help="residual unit kind")
    p.add_argument("--input-shape", default="28,28,1", help="shape of one sample, comma separated (H,W,C or D)")
    p.add_argument("--num-outputs", type=int, default=10, help="classes of the head")
    p.add_argument("--depth", type=int, default=48, help="N, residual units of the original ResNet")
    p.add_argument("--width", type=int, default=4, help="channels (conv) or state width (dense)")
    p.add_argument("--T", type=float, default=1.0, help="final time, h = T/N")
    p.add_argument("--activation", default="relu", help="σ: tanh | relu | smoothrelu | identity")
    p.add_argument("--batch", type=int, default=64, help="samples per batch")
    p.add_argument("--num-parallel", default="1,3,6,12", help="the N_p to time, comma separated")
    p.add_argument("--coarse-units", type=int, default=None, help="N_c of each coarse network (default ⌈12/N_p⌉)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per part (median reported)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results (milliseconds) to this JSON file")
    return p.parse_args(argv)


def median_ms(fn: Callable, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds, after one warm-up call (compilation)."""
    from lpt.perfmodel.calibrate import wall_times

    return 1e3 * statistics.median(wall_times(fn, *args, repeats=repeats))


def fwd_bwd(f: Callable) -> Callable:
    """Jitted forward + backward of ``f(*args)`` against a given cotangent: ``(args, cot) -> grads``."""
    return jax.jit(lambda args, cot: jax.vjp(f, *args)[1](cot))


def _cotangent(key: jax.Array, like: jnp.ndarray) -> jnp.ndarray:
    return jax.random.normal(key, like.shape, like.dtype)


def time_resnet(net: ResNet, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array, repeats: int) -> float:
    """Gradient time of the original ResNet (loss w.r.t. all parameters)."""
    params = net.init(key, x.dtype)
    grad = jax.jit(jax.grad(lambda p: net.data_loss(net.forward(p, x), y)))
    return median_ms(grad, params, repeats=repeats)


def time_parareal(model: ParaRealNet, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array,
                  repeats: int) -> dict[str, float]:
    """Forward + backward time of each part of the parareal network, and of the whole gradient."""
    k_init, k_cot = jax.random.split(key)
    params = model.init(k_init, x.dtype)
    starts = model.preprocess(params, x)
    fine = model.subnetworks(params, starts)
    z_last = model.coarse(params, fine, starts)
    c1, c2, c3 = (_cotangent(k, a) for k, a in zip(jax.random.split(k_cot, 3), (starts, fine, z_last)))
    pre_params = {"opening": params["opening"], "precond": params["precond"]}
    head_params = {"classifier": params["classifier"]}
    one_hs = model.fine_step_sizes(x.dtype)[0]
    one_theta = jax.tree_util.tree_map(lambda t: t[0], params["layers"])
    out = {
        "pre": median_ms(fwd_bwd(lambda p: model.preprocess(p, x)), (pre_params,), c1, repeats=repeats),
        "parallel": median_ms(fwd_bwd(lambda th, s: model.subnetworks({"layers": th}, s)),
                              (params["layers"], starts), c2, repeats=repeats),
        "1 subnet": median_ms(fwd_bwd(lambda th, s: propagate(model.resnet.step, th, one_hs, s)),
                              (one_theta, starts[0]), c2[0], repeats=repeats),
        "coarse": median_ms(fwd_bwd(lambda th, f, s: model.coarse({"coarse": th}, f, s)),
                            (params["coarse"], fine, starts), c3, repeats=repeats),
        "post": median_ms(fwd_bwd(lambda p, z: model.data_loss(model.head(p, z), y)),
                          (head_params, z_last), jnp.ones((), x.dtype), repeats=repeats),
        "total": median_ms(jax.jit(jax.grad(lambda p: model.data_loss(model.forward(p, x), y))), params,
                           repeats=repeats),
    }
    out["ideal"] = out["pre"] + out["1 subnet"] + out["coarse"] + out["post"]
    return out


def format_table(original_ms: float, rows: dict[int, dict[str, float]], coarse_units: dict[int, int]) -> str:
    """The timing table: one row per N_p, times in milliseconds, and the speed-ups original/total, original/ideal."""
    head = f"{'network':<16}" + "".join(f"{p:>10}" for p in PARTS) + f"{'orig/tot':>10}{'orig/ideal':>11}"
    lines = [head, "-" * len(head), f"{'original ResNet':<16}" + f"{'':>{10 * 5}}" + f"{original_ms:>10.2f}"]
    for n_p, row in rows.items():
        name = f"N_p={n_p}, N_c={coarse_units[n_p]}"
        lines.append(f"{name:<16}" + "".join(f"{row[p]:>10.2f}" for p in PARTS)
                     + f"{original_ms / row['total']:>10.2f}{original_ms / row['ideal']:>11.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    net = ResNet(input_shape=shape, num_outputs=args.num_outputs, depth=args.depth, width=args.width, T=args.T,
                 activation=args.activation, layer=args.layer, opening="conv" if args.layer == "conv" else "dense")
    key = jax.random.PRNGKey(args.seed)
    k_x, k_y, k_net = jax.random.split(key, 3)
    x = jax.random.uniform(k_x, (args.batch, *shape), dtype)
    y = jax.random.randint(k_y, (args.batch,), 0, args.num_outputs)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {args.layer} ResNet N={args.depth}, "
          f"width {args.width}, input {shape}, batch {args.batch}, {args.dtype}; median of {args.repeats} calls, ms "
          f"(forward + backward)")
    original = time_resnet(net, x, y, k_net, args.repeats)
    rows: dict[int, dict[str, float]] = {}
    coarse_units: dict[int, int] = {}
    for n_p in (int(s) for s in args.num_parallel.split(",")):
        model = ParaRealNet(net, num_parallel=n_p, coarse_units=args.coarse_units)
        coarse_units[n_p] = model.coarse_units if n_p > 1 else 0
        rows[n_p] = time_parareal(model, x, y, k_net, args.repeats)
    print(format_table(original, rows, coarse_units))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "original_ms": original, "parareal_ms": rows}, f, indent=2)


if __name__ == "__main__":
    main()
