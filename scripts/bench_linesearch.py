#!/usr/bin/env python
"""Compile and step time of an L-BFGS training step with lpt's line search (the objective evaluated once per trial,
``lpt/train/linesearch.py``) against optax's own (``optax.lbfgs``, one evaluation in each branch of its loop).

For each of the two it builds the training step of ``+experiment=PRESET`` (plus overrides) as ``lpt-train``
does, ``--rounds`` times, alternately (a process's first compilation carries one-time costs), and reports the
minimum over the rounds of: tracing + lowering (s), XLA compilation (s), the lowered program's size (lines of
StableHLO) and the step time (minimum of ``--repeats`` steps after a warm-up step, each continuing from the
last). Then the ratios lpt / optax, measured in this one run.

    python scripts/bench_linesearch.py peaks_1024
    python scripts/bench_linesearch.py peaks_lpl --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import jax
import optax



@contextlib.contextmanager
def optax_linesearch():
    """Within the block the runs' L-BFGS is ``optax.lbfgs`` with its own line search."""
    import lpt.train.optim as optim

    saved = optim.lbfgs
    optim.lbfgs = lambda learning_rate, memory_size: optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size)
    try:
        yield
    finally:
        optim.lbfgs = saved


def measure(preset: str, overrides: list[str], repeats: int) -> dict[str, float]:
    """One build of the run's training step (``lpt.train.loop``, as ``lpt-train`` builds it: fault policy, donated
    state): its tracing + lowering, compilation, program size and the minimum of ``repeats`` step times."""
    from lpt.cli.compose import compose_config
    from lpt.train.loop import _Run, _setup

    cfg = compose_config([f"+experiment={preset}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        r = _Run(cfg, tmp, _setup(cfg))
        try:
            state, batch = r.state, r.batch_at(0)
            start = time.perf_counter()
            lowered = r.train_step.lower(state, *batch)
            lowering = time.perf_counter() - start
            start = time.perf_counter()
            compiled = lowered.compile()  # once: jax keeps the executable, a second compile() returns it
            compiling = time.perf_counter() - start
            state = jax.block_until_ready(compiled(state, *batch))[0]
            steps = []
            for _ in range(repeats):
                start = time.perf_counter()
                state = jax.block_until_ready(compiled(state, *batch))[0]  # the step donates its input state
                steps.append(time.perf_counter() - start)
        finally:
            r.lock.release()
    return {"trace_lower_s": lowering, "compile_s": compiling, "hlo_lines": lowered.as_text().count("\n"),
            "step_ms": 1e3 * min(steps)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.depth=64")
    p.add_argument("--repeats", type=int, default=3, help="steps timed per build (the minimum is reported)")
    p.add_argument("--rounds", type=int, default=2, help="builds of each (compiled anew; the minimum is reported)")
    args = p.parse_args(argv)
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: give 1 or more")
    overrides = [*args.overrides, "optimizer=lbfgs"]
    rows: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):  # alternately, so that neither pays alone for the process's first compilation
        for name, context in (("optax", optax_linesearch), ("lpt", contextlib.nullcontext)):
            with context():
                row = measure(args.preset, overrides, args.repeats)
            rows[name] = {k: min(v, rows.get(name, row)[k]) for k, v in row.items()}
    print(f"+experiment={args.preset} {' '.join(args.overrides)} (jax {jax.__version__}, optax {optax.__version__})")
    print(f"{'line search':12s} {'trace+lower s':>14s} {'compile s':>10s} {'HLO lines':>10s} {'step ms':>9s}")
    for name, r in rows.items():
        print(f"{name:12s} {r['trace_lower_s']:14.2f} {r['compile_s']:10.2f} {r['hlo_lines']:10d} {r['step_ms']:9.1f}")
    ratio = {k: rows["lpt"][k] / rows["optax"][k] for k in rows["lpt"]}
    print(f"{'lpt / optax':12s} {ratio['trace_lower_s']:14.2f} {ratio['compile_s']:10.2f} {ratio['hlo_lines']:10.2f} "
          f"{ratio['step_ms']:9.2f}")


if __name__ == "__main__":
    main()
