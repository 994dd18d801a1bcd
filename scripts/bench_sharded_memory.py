#!/usr/bin/env python
"""Per-device memory of layer-sharded training on the device mesh (issue 13): parameters + optimiser state held
by one device, XLA's memory analysis of the compiled step and the layer data it all-gathers, for ``parallel.layers``
= 1, 2, 4.

The training state is built as ``lpt-train parallel=mesh parallel.layers=P`` builds it (emulated CPU devices),
and the script prints, per P and in MB: the bytes of parameters and optimiser state on device 0 (summed over its
shards), the warm-start states on device 0, the compiled step's arguments and temporaries (XLA's analysis, one
device), the MB of the step's all-gathers (their results, read from the compiled HLO) outside the solver's serial
fallback after a divergence (a branch that gathers every layer and runs only then), and the ratio of the first
column to P = 1 times P (1.00 = falls as 1/P):

    python scripts/bench_sharded_memory.py                  # mnist_4096 and a dense N = 4096, width 64 net
    python scripts/bench_sharded_memory.py --layers 1 2 --config "-: model.depth=64 solver=mgrit"

A configuration is ``PRESET: OVERRIDES`` (PRESET ``-`` for the default run). Nothing is run, only compiled.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # 8 devices unless set already
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

DEFAULT_CONFIGS = ("mnist_4096: dataset.n_train=100",
                   "-: model.depth=4096 model.width=64 solver=mgrit dataset.n_train=500")


def on_device0(tree) -> float:
    """MB of the leaves of ``tree`` held by the first device."""
    first = jax.devices()[0]
    return sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves(tree) if isinstance(leaf, jax.Array)
               for shard in leaf.addressable_shards if shard.device == first) / 1e6


def analyse(preset: str | None, overrides: list[str], layers: int) -> dict[str, float]:
    from lpt.cli.compose import compose_config
    from lpt.train.loop import _Run, _setup

    cfg = compose_config([*([f"+experiment={preset}"] if preset else []), *overrides, "parallel=mesh",
                          f"parallel.layers={layers}"])
    with tempfile.TemporaryDirectory(prefix="lpt-bench-") as run_dir:  # the run's log, removed after
        r = _Run(cfg, run_dir, _setup(cfg))
        try:
            state = r.state
            compiled = r.train_step.lower(state, *r.batch_at(0)).compile()
            mem = compiled.memory_analysis()
            return {"params+opt": on_device0((state.params, state.opt_state)),
                    "warm start": on_device0(state.solver_state), "arguments": mem.argument_size_in_bytes / 1e6,
                    "temporaries": mem.temp_size_in_bytes / 1e6, "gathered": gathered(compiled.as_text()) / 1e6}
        finally:
            r.lock.release()


_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=(%[\w.\-]+)"
                     r"|branch_computations=\{([^}]*)\}")


def _computations(hlo: str) -> dict[str, list[str]]:
    """The lines of each computation of compiled HLO text, by name (``%name``)."""
    found: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?(%[\w.\-]+) .*\{$", line)
        if header:
            lines = found.setdefault(header.group(1), [])
        elif line.startswith("  "):
            lines.append(line)
    return found


def _in_branches(computations: dict[str, list[str]]) -> set[str]:
    """The computations that run only within a branch of a conditional: its branches and what they call."""
    def called(name: str, branches_only: bool) -> list[str]:
        out = []
        for line in computations.get(name, []):
            for single, branches in _CALLED.findall(line):
                if branches:
                    out += [b.strip() for b in branches.split(",")]
                elif not branches_only:
                    out.append(single)
        return out

    todo = [b for name in computations for b in called(name, branches_only=True)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += called(name, branches_only=False)
    return seen


def all_gathers(hlo: str) -> list[tuple[tuple[int, ...], int, bool]]:
    """(result shape, result bytes, within a conditional's branch) of every all-gather in compiled HLO text. The
    branch is read from the program's structure, not from the op names jax records (which depend on its settings,
    e.g. ``jax_include_full_tracebacks_in_locations``)."""
    computations = _computations(hlo)
    in_branch = _in_branches(computations)
    found = []
    for name, lines in computations.items():
        for line in lines:
            match = re.search(r"= ([a-z]+)(\d+)\[([\d,]*)\]\S* all-gather(-start)?\(", line)
            if match:
                shape = tuple(int(n) for n in match.group(3).split(",") if n)
                found.append((shape, math.prod(shape) * max(int(match.group(2)), 8) // 8, name in in_branch))
    return found


def gathered(hlo: str) -> int:
    """Bytes of the results of the all-gathers in compiled HLO text, but those in a conditional's branch (the
    serial fallback)."""
    return sum(size for _, size, branch in all_gathers(hlo) if not branch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="PRESET: OVERRIDES (repeatable); default: "
                   + " and ".join(repr(c) for c in DEFAULT_CONFIGS))
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args(argv)
    cols = ("params+opt", "warm start", "arguments", "temporaries", "gathered")
    for config in args.config or DEFAULT_CONFIGS:
        preset, _, rest = config.partition(":")
        preset = preset.strip()
        print(f"{config.strip()} ({jax.devices()[0].device_kind}), MB per device")
        print(f"  {'P':>3} " + " ".join(f"{c:>12}" for c in cols) + f" {'P·(params+opt) / P=1':>22}")
        base = None
        for layers in args.layers:
            row = analyse(None if preset in ("", "-") else preset, rest.split(), layers)
            base = base or row["params+opt"] * layers
            ratio = row["params+opt"] * layers / base
            print(f"  {layers:>3} " + " ".join(f"{row[c]:12.3f}" for c in cols) + f" {ratio:22.3f}")


if __name__ == "__main__":
    main()
