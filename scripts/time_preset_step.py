#!/usr/bin/env python
"""Time one compiled training step of a preset (gradient + optimiser update), as ``lpt-train`` runs it.

Builds the data set, model, solver and optimiser of ``+experiment=PRESET`` (plus overrides), takes the first
batch of the training data and reports the minimum over ``--repeats`` steps after a warm-up step (which
compiles; its time is reported separately). Validation, logging and checkpoints are not included. The process is
set up as ``lpt-train`` sets up its own (``lpt.host``: glibc keeps freed step buffers, the garbage collector runs
less often); before 2026-12-05 it was not, and on a machine where page faults are dear a memory-bound step measured
slower than ``lpt-train`` runs it: the main job's MGRIT step 0.077 s before, 0.051 s now (``taskset -c 0 python
scripts/time_preset_step.py peaks solver=mgrit --repeats 20``, two runs each, alternating, load 0.4-0.7; README,
"Freed step buffers").

    python scripts/time_preset_step.py mnist_4096
    python scripts/time_preset_step.py mnist_4096 solver=serial --repeats 2
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def build_step(preset: str | None, overrides: list[str], donate: bool = True):
    """The training step of ``+experiment=PRESET`` (None: the default run) with ``overrides``, as ``lpt-train``
    builds it (state donated unless ``donate`` is False): (step, state, x, y) for the first batch."""
    from lpt.cli.compose import compose_config
    from lpt.train import build_dataset, build_model, make_optimizer, make_solver, make_train_step
    from lpt.train.optim import carries_evaluations
    from lpt.train.state import init_state, initial_carry

    cfg = compose_config([*([f"+experiment={preset}"] if preset else []), *overrides])
    if cfg.get("dtype") == "float64":
        jax.config.update("jax_enable_x64", True)
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    batch = cfg["train"]["batch_size"] or data.x_train.shape[0]
    solver = make_solver(cfg["solver"], full_batch=batch == data.x_train.shape[0])
    opt = make_optimizer(cfg["optimizer"])
    carry = carries_evaluations(cfg["optimizer"])  # L-BFGS: a step takes the last line search's evaluation
    step = make_train_step(model, solver, opt, lr=cfg["optimizer"]["lr"], donate=donate,
                           line_search=cfg["optimizer"]["name"] == "lbfgs", carry=carry)
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    params = model.init(jax.random.PRNGKey(cfg["seed"]), dtype)
    x = jnp.asarray(data.x_train[:batch], dtype)
    y = jnp.asarray(data.y_train[:batch], dtype if data.task == "regression" else jnp.int32)
    state = init_state(params, opt, solver.init_state(model, params, x), jnp.asarray(1.0, jnp.float32),
                       count_rejections=True)
    if carry:
        state = state._replace(carried=initial_carry(model, solver, state, x, y))
    return step, state, x, y


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. solver=serial")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from lpt.host import set_up_process

    set_up_process()  # the process as lpt-train sets it up: freed step buffers kept (lpt.host)
    step, state, x, y = build_step(args.preset, args.overrides)
    batch = x.shape[0]
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, x, y)[0])
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state, x, y)[0])
        times.append(time.perf_counter() - start)
    print(f"{args.preset} {' '.join(args.overrides)}: step {min(times):.3f} s (min of {args.repeats}; "
          f"first step incl. compilation {first:.1f} s), batch {batch}, {jax.devices()[0].device_kind}")


if __name__ == "__main__":
    main()
