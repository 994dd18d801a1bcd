#!/usr/bin/env python
"""Where the time of one gradient goes: a ``jax.profiler`` trace of one compiled call, summed by XLA operation.

Builds the conv ResNet of ``scripts/bench_convnet.py`` (``--layer conv2``/``conv``) or a dense one
(``--layer dense``), takes lpt's layer-parallel gradient (``--solver mgrit``: cfactor 2, 3 levels, 1 forward +
1 adjoint cycle, F-relaxation on the finest level and FCF below, cold start) or its serial one
(``--solver serial``), times it (minimum of ``--repeats`` after the compiling call), traces one more call and
prints the operations' time by kind (the HLO name without its number: ``concatenate``, ``ynn_fusion`` = a
matrix product, ``pad_slice_fusion`` = a window copy, …), most first, with their share of the traced total.
Single-threaded by default (pin with ``taskset``):

    taskset -c 0 python scripts/profile_gradient.py --depth 128
    taskset -c 0 python scripts/profile_gradient.py --depth 128 --conv-layout NHWC
    taskset -c 0 python scripts/profile_gradient.py --layer dense --width 8 --batch 5000 --depth 128
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

if "--threads" not in " ".join(sys.argv) or "--threads one" in " ".join(sys.argv):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# trace events that contain others (or are the host's own), left out of the per-operation sums
CONTAINERS = re.compile(r"^(\$|Thunk|while|conditional|call|end: )")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", choices=("conv2", "conv", "dense"), default="conv2")
    p.add_argument("--depth", type=int, default=128)
    p.add_argument("--width", type=int, default=8, help="channels (conv) or width (dense)")
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--conv-layout", default="auto")
    p.add_argument("--solver", choices=("mgrit", "serial"), default="mgrit")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=15, help="operation kinds printed")
    p.add_argument("--threads", choices=("one", "all"), default="one")
    return p.parse_args(argv)


def by_operation(trace_dir: Path) -> collections.Counter:
    """Microseconds per operation kind in the perfetto trace under ``trace_dir``."""
    files = sorted(trace_dir.rglob("*perfetto_trace.json.gz"))
    if not files:
        raise SystemExit(f"no perfetto trace was written under {trace_dir}")
    events = json.load(gzip.open(files[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not CONTAINERS.match(name):
            total[re.sub(r"\.\d+$", "", name)] += e.get("dur", 0)
    return total


def main(argv=None):
    args = parse_args(argv)
    from lpt.mgrit import MGRITOptions, MGRITSolver
    from lpt.model import ResNet

    if args.layer == "dense":
        model = ResNet(input_shape=(2,), num_outputs=5, depth=args.depth, width=args.width, T=1.0, activation="tanh")
    else:
        model = ResNet(input_shape=(args.image, args.image, 1), num_outputs=10, depth=args.depth, width=args.width,
                       T=1.0, activation="relu", layer=args.layer, opening="conv", conv_impl=args.conv_impl,
                       conv_layout=args.conv_layout)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, *model.input_shape))
    labels = jnp.arange(args.batch) % model.num_outputs
    if args.solver == "mgrit":
        opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, nrelax_fine=0, max_iter=1)
        solver = MGRITSolver(fwd=opts, bwd=opts, warm_start=False)
        grad = jax.jit(lambda p: solver.value_and_grad(model, p, x, labels, ())[:3])
    else:
        grad = jax.jit(jax.value_and_grad(lambda p: model.data_loss(model.forward(p, x), labels)))

    start = time.perf_counter()
    jax.block_until_ready(grad(params))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(params))
        times.append(time.perf_counter() - start)
    layout = model.layout if model.is_conv else "-"
    print(f"{args.solver} gradient, {args.layer}, N = {args.depth}, width {args.width}, batch {args.batch}, "
          f"layout {layout}, threads {args.threads}: {min(times):.3f} s (min of {args.repeats}; first call "
          f"incl. compilation {first:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="lpt-profile-") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            jax.block_until_ready(grad(params))
        ops = by_operation(Path(tmp))
    total = sum(ops.values())
    print(f"traced operations: {total / 1e6:.3f} s in all; by kind (s, share):")
    for name, us in ops.most_common(args.top):
        print(f"  {name:<40} {us / 1e6:8.3f}  {100 * us / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
