#!/usr/bin/env python
"""XLA's memory analysis of one compiled training step, with and without donating the training state.

For each configuration (a preset and overrides, as ``lpt-train`` would run it) the step is compiled twice —
state kept (``donate_argnums`` unset) and state donated (what ``lpt-train`` does) — and the script prints the
bytes of the training state, the step's arguments, outputs, outputs aliased to donated arguments, its
temporaries, and what the step holds at once (arguments + outputs − aliased + temporaries), in MB:

    python scripts/bench_memory.py                        # mnist_4096 and a dense N = 4096, width 64 net
    python scripts/bench_memory.py --config "peaks: model.depth=64"

A configuration is ``PRESET: OVERRIDES`` (PRESET ``-`` for the default run). Nothing is run, only compiled.
"""

from __future__ import annotations

import argparse

import jax

from time_preset_step import build_step

DEFAULT_CONFIGS = ("mnist_4096:", "-: model.depth=4096 model.width=64 solver=mgrit")


def analyse(preset: str | None, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Memory (MB) of the step of one configuration, for ``kept`` and ``donated`` state."""
    out = {}
    for name, donate in (("kept", False), ("donated", True)):
        step, state, x, y = build_step(preset, overrides, donate=donate)
        mem = step.lower(state, x, y).compile().memory_analysis()
        held = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes)
        out[name] = {"state": sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state)) / 1e6,
                     "arguments": mem.argument_size_in_bytes / 1e6, "outputs": mem.output_size_in_bytes / 1e6,
                     "aliased": mem.alias_size_in_bytes / 1e6, "temporaries": mem.temp_size_in_bytes / 1e6,
                     "held": held / 1e6}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="PRESET: OVERRIDES (repeatable); default: "
                   + " and ".join(repr(c) for c in DEFAULT_CONFIGS))
    args = p.parse_args(argv)
    cols = ("state", "arguments", "outputs", "aliased", "temporaries", "held")
    for config in args.config or DEFAULT_CONFIGS:
        preset, _, rest = config.partition(":")
        preset = preset.strip()
        result = analyse(None if preset in ("", "-") else preset, rest.split())
        print(f"{config.strip()} ({jax.devices()[0].device_kind}), MB")
        print(f"  {'':>8} " + " ".join(f"{c:>11}" for c in cols))
        for name, row in result.items():
            print(f"  {name:>8} " + " ".join(f"{row[c]:11.2f}" for c in cols))
        kept, donated = result["kept"]["held"], result["donated"]["held"]
        print(f"  held at once, donated / kept: {donated / kept:.3f}")


if __name__ == "__main__":
    main()
