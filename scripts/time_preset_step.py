#!/usr/bin/env python
"""Time one compiled training step of a preset (gradient + optimiser update), as ``lpt-train`` runs it.

Builds the data set, model, solver and optimiser of ``+experiment=PRESET`` (plus overrides), takes the first
batch of the training data and reports the minimum over ``--repeats`` steps after a warm-up step (which
compiles; its time is reported separately). Validation, logging and checkpoints are not included.

    python scripts/time_preset_step.py mnist_4096
    python scripts/time_preset_step.py mnist_4096 solver=serial --repeats 2
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. solver=serial")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from lpt.cli.compose import compose_config
    from lpt.train import TrainState, build_dataset, build_model, make_optimizer, make_solver, make_train_step

    cfg = compose_config([f"+experiment={args.preset}", *args.overrides])
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    batch = cfg["train"]["batch_size"] or data.x_train.shape[0]
    solver = make_solver(cfg["solver"], full_batch=batch == data.x_train.shape[0])
    opt = make_optimizer(cfg["optimizer"])
    step = make_train_step(model, solver, opt, lr=cfg["optimizer"]["lr"], line_search=cfg["optimizer"]["name"] == "lbfgs")
    params = model.init(jax.random.PRNGKey(cfg["seed"]))
    x, y = jnp.asarray(data.x_train[:batch]), jnp.asarray(data.y_train[:batch])
    state = TrainState(params, opt.init(params), solver.init_state(model, params, x), jnp.asarray(0, jnp.int32))
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
