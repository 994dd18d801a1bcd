"""The training loop: build everything from the configuration, train, evaluate, log, checkpoint, resume."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from lpt.data import DataError
from lpt.logging import CHECKPOINT_NAME, LOG_NAME, RunLog, find_checkpoint, load_checkpoint, save_checkpoint
from lpt.model import ModelError
from lpt.train.build import ConfigError, LoopSettings, build_dataset, build_model, check_batch, check_dtype
from lpt.train.optim import make_optimizer, needs_value_fn
from lpt.train.solver import make_solver
from lpt.train.state import TrainState, make_evaluate, make_train_step

log = logging.getLogger("lpt")


@dataclass(frozen=True)
class RunResult:
    """What a finished run returns: where its files are and its final metrics."""

    run_dir: Path
    log_path: Path
    final: dict[str, float]


def _batch_indices(seed: int, step: int, n: int, batch: int, cache: dict) -> np.ndarray:
    """Minibatch of ``step``: epoch e = step // (n // batch) is a seeded permutation of the n samples."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    if cache.get("epoch") != epoch:
        cache["epoch"] = epoch
        cache["perm"] = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
    return cache["perm"][i * batch:(i + 1) * batch]


def _check_parallel(parallel: Mapping[str, Any]) -> tuple[int, int]:
    name = parallel.get("name")
    grid = (parallel.get("data", 1), parallel.get("layers", 1))
    if name != "single":
        raise ConfigError(f"parallel={name!r} is not available in this build; choose single")
    if grid != (1, 1):
        raise ConfigError(f"parallel=single runs on one device: parallel.data × parallel.layers must be 1 × 1, "
                          f"got {grid[0]} × {grid[1]}")
    return grid


def run(cfg: Mapping[str, Any], run_dir: str | Path) -> RunResult:
    """Train as configured (a resolved mapping of the Hydra config) and log into ``run_dir``.

    With ``resume=PATH`` (a run directory or its checkpoint file) the run continues from the checkpoint in
    that directory, and its log there is continued: rows after the checkpoint's step are dropped first.
    """
    try:
        setup = _setup(cfg)
    except (ConfigError, DataError, ModelError):
        raise
    except ValueError as exc:  # option checks of the optimiser and solver modules
        raise ConfigError(str(exc)) from exc
    return _train(cfg, run_dir, *setup)


def _setup(cfg: Mapping[str, Any]):
    """Check the configuration and build data, model, loop settings, optimiser and solver (no compilation)."""
    dtype = check_dtype(cfg.get("dtype", "float32"))
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    grid = _check_parallel(cfg["parallel"])
    loop = LoopSettings.from_config(cfg["train"], cfg["logging"])
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    check_batch(loop, data, cfg["optimizer"].get("name"))
    optimizer = make_optimizer(cfg["optimizer"])
    if cfg["model"].get("arch") == "parareal" and cfg["solver"].get("name") != "serial":
        raise ConfigError(f"model.arch=parareal is trained end-to-end by ordinary backpropagation: use "
                          f"solver=serial, not solver={cfg['solver'].get('name')}")
    full_batch = loop.batch_size in (None, data.x_train.shape[0])
    solver = make_solver(cfg["solver"], full_batch=full_batch)
    return dtype, grid, loop, seed, data, model, optimizer, full_batch, solver


def _train(cfg, run_dir, dtype, grid, loop, seed, data, model, optimizer, full_batch, solver) -> RunResult:

    run_dir = Path(run_dir)
    resume = cfg.get("resume")
    ckpt_path = find_checkpoint(resume) if resume else None
    if ckpt_path is not None:
        run_dir = ckpt_path.parent
    ckpt_path = run_dir / CHECKPOINT_NAME

    x_train = jnp.asarray(data.x_train, dtype)
    y_train = jnp.asarray(data.y_train, dtype if data.task == "regression" else jnp.int32)
    x_val = jnp.asarray(data.x_val, dtype)
    y_val = jnp.asarray(data.y_val, dtype if data.task == "regression" else jnp.int32)
    n = x_train.shape[0]
    batch = n if full_batch else loop.batch_size

    params = model.init(jax.random.PRNGKey(seed), jnp.dtype(dtype))
    state = TrainState(params, optimizer.init(params), solver.init_state(model, params, x_train[:batch]),
                       jnp.asarray(0, jnp.int32))
    elapsed = 0.0
    if resume:
        state, meta = load_checkpoint(ckpt_path, state)
        elapsed = float(meta.get("time_s", 0.0))
        log.info("resuming %s from step %d", run_dir, int(state.step))

    config_yaml = yaml.safe_dump(dict(cfg), sort_keys=False)
    runlog = RunLog(run_dir / LOG_NAME, config_yaml=config_yaml, grid=grid,
                    devices=", ".join(str(d) for d in jax.devices()[:1]), resume=bool(resume))
    start = int(state.step)
    if resume:
        runlog.truncate(start)
    train_step = make_train_step(model, solver, optimizer, lr=float(cfg["optimizer"]["lr"]),
                                 line_search=needs_value_fn(cfg["optimizer"]))
    evaluate = make_evaluate(model, loop.eval_chunk)
    metric = "acc" if data.task == "classification" else "mse"
    raise_on_divergence = getattr(solver, "on_divergence", "serial") == "error"

    def checkpoint(st: TrainState, time_s: float) -> None:
        meta = {"step": int(st.step), "seed": seed, "time_s": time_s}
        leaves = save_checkpoint(ckpt_path, st, meta)
        runlog.write_checkpoint(leaves, meta)

    log.info("%s: N=%d width=%d %s/%s, solver=%s, optimizer=%s, %d training samples, batch %d, steps %d",
             data.name, model.depth, model.width, model.layer, model.activation, cfg["solver"]["name"],
             cfg["optimizer"]["name"], n, batch, loop.steps)
    progress = _progress(loop, start)
    perm_cache: dict = {}
    t0 = time.perf_counter() - elapsed
    final: dict[str, float] = {}
    try:
        for step in range(start, loop.steps):
            if full_batch:
                xb, yb = x_train, y_train
            else:
                idx = jnp.asarray(_batch_indices(seed, step, n, batch, perm_cache))
                xb, yb = x_train[idx], y_train[idx]
            state, metrics, stats = train_step(state, xb, yb)
            done = step + 1
            evaluate_now = done % loop.eval_every == 0 or done == loop.steps
            if not (evaluate_now or done % loop.log_every == 0):
                progress.update(1)
                continue
            metrics, stats = jax.device_get((metrics, stats))
            if raise_on_divergence and bool(stats.get("diverged", False)):
                raise FloatingPointError(f"MGRIT diverged at step {done} (residuals {stats.get('fwd_residual')}); "
                                         f"set solver.on_divergence=serial to fall back to serial propagation")
            row = {"step": done, "epoch": done * batch / n, **{k: float(v) for k, v in metrics.items()},
                   f"val_{metric}": math.nan}
            if evaluate_now:
                val = evaluate(state.params, x_val, y_val)
                row.update({f"val_{k}": v for k, v in val.items()})
                final = {k: v for k, v in row.items()}
                log.info("step %d/%d  loss %.4g  train_%s %.4g  val_%s %.4g", done, loop.steps, row["loss"],
                         metric, row[f"train_{metric}"], metric, row[f"val_{metric}"])
            row["time_s"] = time.perf_counter() - t0
            runlog.append(row, {k: np.asarray(v, np.float64) for k, v in stats.items()})
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.3g}", refresh=False)
            if done % loop.checkpoint_every == 0 or done == loop.steps:
                checkpoint(state, row["time_s"])
        runlog.set_attr("status", "completed")
    except BaseException as exc:
        runlog.set_attr("status", f"failed: {type(exc).__name__}")
        raise
    finally:
        progress.close()
        runlog.close()
    return RunResult(run_dir=run_dir, log_path=run_dir / LOG_NAME, final=final)


def _progress(loop: LoopSettings, start: int):
    """A tqdm bar on interactive terminals; silent in batch logs (tqdm's ``disable=None``)."""
    from tqdm.auto import tqdm

    return tqdm(total=loop.steps, initial=start, disable=None if loop.progress else True, unit="step",
                dynamic_ncols=True, leave=False)
