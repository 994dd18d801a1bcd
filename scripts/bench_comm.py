#!/usr/bin/env python
"""Measure the latency α and inverse bandwidth β of one neighbour message for each communication back-end.

    python scripts/bench_comm.py single
    python scripts/bench_comm.py mesh                       # 2 emulated CPU devices (set here if needed)
    mpirun --allow-run-as-root --oversubscribe -np 2 python scripts/bench_comm.py mpi

Prints the time per message for each size and the fitted line t = α + β·bytes (mpi: and σ, what a message
adds while the ranks compute between messages); ``--save FILE`` stores α, β
in a performance-model calibration file (the one ``lpt-model`` reads). The measurements are the functions of
:mod:`lpt.perfmodel.comm`, which ``lpt-model calibrate --comm BACKEND`` runs as well.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backend", choices=("single", "mesh", "mpi"))
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="message sizes in bytes")
    parser.add_argument("--chain", type=int, default=20, help="messages per timed chain")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--save", default=None, help="calibration file to store α, β in")
    args = parser.parse_args(argv)
    if args.backend == "mesh" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        os.environ["XLA_FLAGS"] = flags.strip()

    from lpt.perfmodel.comm import SIZES, measure
    from lpt.perfmodel.costs import Calibration

    kwargs = {} if args.backend == "single" else {"chain": args.chain, "repeats": args.repeats}
    costs, samples = measure(args.backend, tuple(args.sizes or SIZES), **kwargs)
    if args.backend == "mpi":
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() != 0:
            return 0
    print(f"back-end {args.backend}: one neighbour message")
    for nbytes, seconds in samples:
        print(f"  {nbytes:>10d} B  {seconds * 1e6:12.2f} us   fit {costs.message(nbytes) * 1e6:12.2f} us")
    print(f"alpha = {costs.alpha * 1e6:.2f} us   beta = {costs.beta * 1e9:.4f} ns/B "
          f"({(1 / costs.beta / 1e9) if costs.beta > 0 else float('inf'):.2f} GB/s)"
          + (f"   sync (ranks computing between messages) = {costs.sync * 1e6:.1f} us"
             if args.backend == "mpi" else ""))
    if args.save:
        cal = Calibration.load_or_new(args.save)
        cal.comm[args.backend] = costs
        cal.save(args.save)
        print(f"saved to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
