#!/usr/bin/env python
"""XLA's memory analysis of one compiled training step: with and without donating the training state, or against
the estimate that stops a run before compiling (:mod:`lpt.train.memory`).

For each configuration (a preset and overrides, as ``lpt-train`` would run it) the step is compiled twice —
state kept (``donate_argnums`` unset) and state donated (what ``lpt-train`` does) — and the script prints the
bytes of the training state, the step's arguments, outputs, outputs aliased to donated arguments, its
temporaries, and what the step holds at once (arguments + outputs − aliased + temporaries), in MB:

    python scripts/bench_memory.py                        # mnist_4096 and a dense N = 4096, width 64 net
    python scripts/bench_memory.py --config "peaks: model.depth=64"

With ``--estimate`` the donated step only, and beside XLA's figure the estimate (training state, gradient, layer
states) and estimate / XLA; without ``--config`` the configurations of ``tests/test_memory.py`` and three full
presets (on a GPU; the full presets need 10-50 GB):

    python scripts/bench_memory.py --estimate

A configuration is ``PRESET: OVERRIDES`` (PRESET ``-`` for the default run). Nothing is run, only compiled, on
JAX's default device, in the dtype of the configuration.
"""

from __future__ import annotations

import argparse

import jax

from time_preset_step import build_step

DEFAULT_CONFIGS = ("mnist_4096:", "-: model.depth=4096 model.width=64 solver=mgrit")
ESTIMATE_CONFIGS = (
    "-: model.depth=64 solver=serial",
    "-: model.depth=64 solver=mgrit",
    "-: model.depth=128 model.width=16 solver=mgrit solver.warm_start=false",
    "-: model.depth=64 solver=mgrit optimizer=lbfgs",
    "mnist_torchbraid: dataset.n_train=200 model.depth=16",
    "mnist_torchbraid: dataset.n_train=200 model.depth=16 solver=serial model.layer=conv",
)
FULL_PRESETS = (*DEFAULT_CONFIGS, "indian_pines_512:")


def held(mem) -> int:
    """Bytes a compiled step holds at once, by XLA's memory analysis ``mem``."""
    return mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes


def analyse(preset: str | None, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Memory (MB) of the step of one configuration, for ``kept`` and ``donated`` state."""
    out = {}
    for name, donate in (("kept", False), ("donated", True)):
        step, state, x, y = build_step(preset, overrides, donate=donate)
        mem = step.lower(state, x, y).compile().memory_analysis()
        out[name] = {"state": sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state)) / 1e6,
                     "arguments": mem.argument_size_in_bytes / 1e6, "outputs": mem.output_size_in_bytes / 1e6,
                     "aliased": mem.alias_size_in_bytes / 1e6, "temporaries": mem.temp_size_in_bytes / 1e6,
                     "held": held(mem) / 1e6}
    return out


def estimate_and_xla(preset: str | None, overrides: list[str]):
    """(the estimate, XLA's bytes held at once, the training state) of the donated step of one configuration."""
    from lpt.cli.compose import compose_config
    from lpt.train import build_dataset, build_model, make_optimizer, make_solver
    from lpt.train.memory import estimate_step_memory
    from lpt.train.optim import needs_value_fn

    step, state, x, y = build_step(preset, overrides)
    xla = held(step.lower(state, x, y).compile().memory_analysis())
    cfg = compose_config([*([f"+experiment={preset}"] if preset else []), *overrides])
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    solver = make_solver(cfg["solver"], full_batch=x.shape[0] == data.x_train.shape[0])
    estimate = estimate_step_memory(model, solver, make_optimizer(cfg["optimizer"]),
                                    jax.ShapeDtypeStruct(x.shape, x.dtype),
                                    line_search=needs_value_fn(cfg["optimizer"]))
    return estimate, xla, state


def _print_donation(config: str, result: dict) -> None:
    cols = ("state", "arguments", "outputs", "aliased", "temporaries", "held")
    print(f"{config} ({jax.devices()[0].device_kind}), MB")
    print(f"  {'':>8} " + " ".join(f"{c:>11}" for c in cols))
    for name, row in result.items():
        print(f"  {name:>8} " + " ".join(f"{row[c]:11.2f}" for c in cols))
    print(f"  held at once, donated / kept: {result['donated']['held'] / result['kept']['held']:.3f}")


def _print_estimate(config: str, estimate, xla: int) -> None:
    print(f"{config} ({jax.devices()[0].device_kind}): estimate {estimate.total / 1e6:.1f} MB (state "
          f"{estimate.state / 1e6:.1f}, gradient {estimate.gradient / 1e6:.1f}, layer states "
          f"{estimate.layer_states / 1e6:.1f}), XLA {xla / 1e6:.1f} MB, estimate / XLA {estimate.total / xla:.3f}",
          flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="PRESET: OVERRIDES (repeatable); default: "
                   + " and ".join(repr(c) for c in DEFAULT_CONFIGS))
    p.add_argument("--estimate", action="store_true", help="the estimate against XLA's figure (donated step)")
    args = p.parse_args(argv)
    configs = args.config or ((*ESTIMATE_CONFIGS, *FULL_PRESETS) if args.estimate else DEFAULT_CONFIGS)
    for config in configs:
        preset, _, rest = config.partition(":")
        preset = None if preset.strip() in ("", "-") else preset.strip()
        if args.estimate:
            estimate, xla, _ = estimate_and_xla(preset, rest.split())
            _print_estimate(config.strip(), estimate, xla)
        else:
            _print_donation(config.strip(), analyse(preset, rest.split()))


if __name__ == "__main__":
    main()
