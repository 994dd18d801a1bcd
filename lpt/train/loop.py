"""The training loop: build everything from the configuration, train, evaluate, log, checkpoint, resume."""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from lpt.data import DataError
from lpt.logging import (CHECKPOINT_NAME, LOG_NAME, RunDirBusy, RunDirLock, RunLog, load_checkpoint, resolve_resume,
                         save_checkpoint)
from lpt.logging.null import NullLog
from lpt.model import ModelError
from lpt.parallel import GridError, ProcessorGrid
from lpt.parallel.runtime import Runtime
from lpt.train.build import ConfigError, LoopSettings, build_dataset, build_model, check_batch, check_dtype
from lpt.train.memory import device_memory, estimate_step_memory, gib, memory_message
from lpt.train.nonfinite import NonFiniteGuard, inject_nan
from lpt.train.optim import make_optimizer, needs_value_fn
from lpt.train.progress import RunProgress
from lpt.train.signals import Interrupted, StopRequest, StopWhileCompiling
from lpt.train.solver import SerialSolver, make_solver
from lpt.train.state import TrainState, init_state, make_evaluate, make_train_step
from lpt.train.validate import validate_config

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


def _check_parallel(cfg: Mapping[str, Any], loop: LoopSettings, n_train: int) -> ProcessorGrid:
    """The processor grid (config group ``parallel``) and its fit with solver, optimiser and batch size."""
    try:
        grid = ProcessorGrid.from_config(cfg["parallel"])
        grid.check_resources()
    except GridError as exc:
        raise ConfigError(str(exc)) from exc
    solver, optimizer = cfg["solver"].get("name"), cfg["optimizer"].get("name")
    if grid.layers > 1 and solver != "mgrit":
        raise ConfigError(f"parallel.layers={grid.layers} splits the layers into chunks, which needs the "
                          f"layer-parallel solver: set solver=mgrit (solver={solver} propagates serially)")
    if grid.data > 1 and optimizer == "lbfgs":
        raise ConfigError(f"optimizer=lbfgs is not available with data-parallel ranks (parallel.data="
                          f"{grid.data}): its line search needs the objective of the whole batch on every rank")
    batch = loop.batch_size or n_train
    if batch % grid.data:
        raise ConfigError(f"the batch of {batch} samples (train.batch_size) must divide evenly among "
                          f"parallel.data={grid.data} data-parallel ranks")
    return grid


def run(cfg: Mapping[str, Any], run_dir: str | Path) -> RunResult:
    """Train as configured (a resolved mapping of the Hydra config) and log into ``run_dir``.

    With ``resume=PATH`` (a run directory or its checkpoint file) the run continues from the checkpoint in
    that directory, and its log there is continued: rows after the checkpoint's step are dropped first.
    ``resume=auto`` (and a requeued SLURM job) continues from ``run_dir``'s own checkpoint if it has one.

    Raises:
        ConfigError, DataError, ModelError, FileNotFoundError: invalid input, before anything is compiled.
        Interrupted: SIGTERM/SIGINT/SIGUSR1 arrived; a checkpoint was written after the current step.
        NonFiniteError: non-finite steps ended the run (``train.on_nonfinite``); the last good state is saved.
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
    validate_config(cfg)
    try:
        ProcessorGrid.from_config(cfg["parallel"]).connect()  # several JAX processes: before any device is used
    except GridError as exc:
        raise ConfigError(str(exc)) from exc
    dtype = check_dtype(cfg.get("dtype", "float32"))
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
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
    runtime = Runtime.create(_check_parallel(cfg, loop, data.x_train.shape[0]))
    solver = runtime.with_comm(make_solver(cfg["solver"], full_batch=full_batch))
    if hasattr(solver, "layouts"):
        solver.layouts(model.depth)  # too many layer ranks for this depth: refused before any work
    _check_memory(cfg, model, solver, optimizer, data, dtype, loop, runtime)
    return dtype, runtime, loop, seed, data, model, optimizer, full_batch, solver


def _check_memory(cfg, model, solver, optimizer, data, dtype, loop: LoopSettings, runtime: Runtime) -> None:
    """Stop before compiling when the step cannot fit in the device's memory (:mod:`lpt.train.memory`)."""
    batch = loop.batch_size or data.x_train.shape[0]
    x = jax.ShapeDtypeStruct((batch, *data.x_train.shape[1:]), jnp.dtype(dtype))
    estimate = estimate_step_memory(model, solver, optimizer, x, line_search=needs_value_fn(cfg["optimizer"]),
                                    data_ranks=runtime.grid.data)
    available = device_memory()
    message = memory_message(estimate, available, cfg)
    if message is not None:
        raise ConfigError(message)
    log.info("memory: about %s per device for the training step (estimate), of %s", gib(estimate.total),
             gib(available))


def _train(cfg, run_dir, dtype, runtime, loop, seed, data, model, optimizer, full_batch, solver) -> RunResult:

    run_dir = Path(run_dir)
    resume = resolve_resume(cfg.get("resume"), run_dir)
    ckpt_path = resume
    if ckpt_path is not None:
        run_dir = ckpt_path.parent
    ckpt_path = run_dir / CHECKPOINT_NAME
    try:
        # held until the run ends by the process that writes files: two runs never write the same files
        lock = RunDirLock(run_dir) if runtime.is_root else NullLog()
    except RunDirBusy as exc:
        raise ConfigError(str(exc)) from exc

    x_train = jnp.asarray(data.x_train, dtype)
    y_train = jnp.asarray(data.y_train, dtype if data.task == "regression" else jnp.int32)
    x_val = jnp.asarray(data.x_val, dtype)
    y_val = jnp.asarray(data.y_val, dtype if data.task == "regression" else jnp.int32)
    n = x_train.shape[0]
    batch = n if full_batch else loop.batch_size

    params = model.init(jax.random.PRNGKey(seed), jnp.dtype(dtype))
    state = init_state(params, optimizer, runtime.init_solver_state(solver, model, params, x_train[:batch]),
                       jnp.asarray(1.0, jnp.float32), count_rejections=True)
    elapsed = 0.0
    batch_axis = getattr(model, "state_batch_axis", 0)  # of the warm-start states, for checkpoints
    if resume:
        try:
            state, meta = load_checkpoint(ckpt_path, runtime.checkpoint_template(state, batch_axis))
        except ValueError as exc:  # another model/optimizer/solver than the checkpoint's
            lock.release()
            raise ConfigError(str(exc)) from exc
        state = runtime.local_state(state, batch_axis)  # MPI: this rank's blocks of the warm-start states
        elapsed = float(meta.get("time_s", 0.0))
        if int(state.step) >= loop.steps:
            lock.release()
            raise ConfigError(f"resume={cfg.get('resume')}: the checkpoint in {run_dir} is at step {int(state.step)}, "
                              f"and train.steps={loop.steps} asks for no more; set train.steps above "
                              f"{int(state.step)} to continue training")
        log.info("resuming %s from step %d", run_dir, int(state.step))

    config_yaml = yaml.safe_dump(dict(cfg), sort_keys=False)
    if not runtime.is_root:  # MPI ranks > 0: no files, no console output
        log.setLevel(logging.WARNING)
    grid = runtime.grid
    runlog = (RunLog(run_dir / LOG_NAME, config_yaml=config_yaml, grid=(grid.data, grid.layers),
                     devices=f"{grid.backend}: " + ", ".join(str(d) for d in jax.devices()[: grid.size]),
                     resume=bool(resume)) if runtime.is_root else NullLog())
    start = int(state.step)
    if resume:
        runlog.truncate(start)
    runlog.set_attr("status", "running")  # until the run ends: completed, interrupted or failed
    step_options = dict(lr=float(cfg["optimizer"]["lr"]), line_search=needs_value_fn(cfg["optimizer"]),
                        comm=runtime.comm, wrap=runtime.wrap_step(solver, model, params, x_train[:batch]))
    evaluate = make_evaluate(model, loop.eval_chunk)
    metric = "acc" if data.task == "classification" else "mse"
    # every validation column gets a row per logged step (NaN where not evaluated), so columns stay aligned
    not_evaluated = {f"val_{k}": math.nan for k in (("acc", "loss") if metric == "acc" else ("mse", "rel_err"))}
    raise_on_divergence = getattr(solver, "on_divergence", "serial") == "error"
    stability = _StabilityCheck(solver, model, x_train, warn=runtime.is_root)

    def checkpoint(st: TrainState, time_s: float) -> None:
        st = runtime.host_state(st, batch_axis)  # every process takes part in gathering the layer chunks
        if not runtime.is_root:
            return
        meta = {"step": int(st.step), "seed": seed, "time_s": time_s}
        leaves = save_checkpoint(ckpt_path, st, meta)
        runlog.write_checkpoint(leaves, meta)

    def save_last_good(st: TrainState) -> Path:
        checkpoint(st, time.perf_counter() - t0)
        return ckpt_path

    guard = NonFiniteGuard(loop, lambda: make_train_step(model, SerialSolver(), optimizer, **step_options),
                           save_last_good, lr_scale=float(state.lr_scale), rejections=int(state.rejections))
    # the state is donated: the step replaces it in place instead of holding it twice
    train_step = make_train_step(model, solver, optimizer, **step_options, faults=guard.policy(), donate=True)

    log.info("%s: N=%d width=%d %s/%s, solver=%s, optimizer=%s, %d training samples, batch %d, steps %d",
             data.name, model.depth, model.width, model.layer, model.activation, cfg["solver"]["name"],
             cfg["optimizer"]["name"], n, batch, loop.steps)
    _report_padding(solver, model.depth, runlog)
    stability.start(state.params)
    progress = RunProgress(loop.steps, start, bar=loop.progress and runtime.is_root)
    perm_cache: dict = {}
    t0 = time.perf_counter() - elapsed
    final: dict[str, float] = {}
    # SIGTERM, SIGINT, SIGUSR1: finish the step, checkpoint, exit 128 + signal (on MPI: all ranks at one step)
    # several JAX processes agree at the steps that log a row (a gather, which waits for the step); MPI ranks at
    # every step (an allreduce on the host)
    stop = StopRequest(agree=runtime.agree_stop())
    stop_every = loop.log_every if runtime.grid.processes > 1 else 1
    hint = (f"continue from the checkpoint with resume={run_dir}" if start
            else "nothing was trained; run the command again to start afresh")
    compiling = StopWhileCompiling(stop, lambda signum: runlog.set_attr(
        "status", f"interrupted: {signal.Signals(signum).name}"), hint)
    pending: list = []  # (step, metrics, stats, non-finite or None) of the steps since the last row, on the device

    def log_rows(evaluate_now: bool) -> None:
        """Rows of the steps since the last row (one fetch from the device): each rejected step's, then the last
        step's (with the validation metrics when ``evaluate_now``). Sets the guard's halt if a step ended the run."""
        nonlocal final
        entries, last = jax.device_get(pending), pending[-1][0]
        pending.clear()
        for done, metrics, stats, nonfinite in entries:
            if nonfinite is None:
                nonfinite = guard.review(done, metrics)
            if done != last and not nonfinite:
                continue
            if raise_on_divergence and bool(stats.get("diverged", False)):
                raise FloatingPointError(f"MGRIT diverged at step {done} (residuals {stats.get('fwd_residual')}); "
                                         f"set solver.on_divergence=serial to fall back to serial propagation")
            row = {"step": done, "epoch": done * batch / n, **{k: float(v) for k, v in metrics.items()},
                   "nonfinite": float(nonfinite), **not_evaluated}
            evaluated = evaluate_now and done == last and not guard.halted
            stats = {**stats, **stability.row(state.params if evaluated else None)}
            if evaluated:
                row.update({f"val_{k}": v for k, v in evaluate(state.params, x_val, y_val).items()})
                final = dict(row)
                log.info("step %d/%d  loss %.4g  train_%s %.4g  val_%s %.4g", done, loop.steps, row["loss"],
                         metric, row[f"train_{metric}"], metric, row[f"val_{metric}"])
            row["time_s"] = time.perf_counter() - t0
            runlog.append(row, {k: np.asarray(v, np.float64) for k, v in stats.items()})
            progress.logged_row(row, stats)
            if guard.halted:  # the later steps left the state as it was
                break
        progress.rejected = guard.rejected

    try:
        for step in range(start, loop.steps):
            if (step - start) % stop_every == 0 and stop.should_stop():
                if pending:
                    log_rows(False)
                if guard.halted:
                    raise guard.stop(state)
                checkpoint(state, time.perf_counter() - t0)
                runlog.set_attr("status", f"interrupted: {stop.name}")
                log.warning("interrupted by %s after step %d: checkpoint written to %s", stop.name, step, ckpt_path)
                raise Interrupted(stop.signum, step, ckpt_path)
            if full_batch:
                xb, yb = x_train, y_train
            else:
                idx = jnp.asarray(_batch_indices(seed, step, n, batch, perm_cache))
                xb, yb = x_train[idx], y_train[idx]
            xb, yb = runtime.local_batch(xb, yb)
            x_in = inject_nan(xb) if step + 1 == loop.inject_nan_at_step else xb  # test hook, normally xb
            state, metrics, stats = train_step(state, x_in, yb)
            compiling.done()
            done = step + 1
            nonfinite = None  # known on the host only under on_nonfinite=serial; else read with the next row
            if guard.eager:
                state, metrics, nonfinite = guard.check(state, metrics, xb, yb, done)
            pending.append((done, metrics, stats, nonfinite))
            progress.step(done, metrics)
            evaluate_now = done % loop.eval_every == 0 or done == loop.steps
            if not (evaluate_now or done % loop.log_every == 0 or nonfinite):
                continue
            log_rows(evaluate_now)
            if guard.halted:  # on_nonfinite=stop or too many rejections: the last good state is saved
                raise guard.stop(state)
            if done % loop.checkpoint_every == 0 or done == loop.steps:
                checkpoint(state, time.perf_counter() - t0)
        runlog.set_attr("status", "completed")
        if runtime.is_root:
            progress.summary(loop.steps, final, run_dir / LOG_NAME)
    except Interrupted:
        raise
    except BaseException as exc:
        runlog.set_attr("status", f"failed: {type(exc).__name__}")
        raise
    finally:
        compiling.done()
        stop.restore()
        progress.close()
        runlog.close()
        lock.release()
    return RunResult(run_dir=run_dir, log_path=run_dir / LOG_NAME, final=final)


PADDING_WARN = 0.05
"""Padding (identity steps the MGRIT layout adds, relative to the depth) above which the run warns."""


def _report_padding(solver, depth: int, runlog) -> None:
    """The real and the padded depth of an MGRIT run: logged (a warning above :data:`PADDING_WARN` more work,
    with the nearest depths that need no padding) and kept as the log's attributes ``depth`` and
    ``padded_depth``."""
    if not hasattr(solver, "layouts"):
        runlog.set_attr("depth", depth)
        runlog.set_attr("padded_depth", depth)
        return
    fwd = solver.layouts(depth)[0]
    runlog.set_attr("depth", depth)
    runlog.set_attr("padded_depth", fwd.n_pad)
    extra = fwd.n_pad / depth - 1
    line = (f"MGRIT pads depth {depth} to {fwd.n_pad} layer steps ({fwd.n_pad - depth} identity steps, "
            f"{100 * extra:.3g} % more work per cycle), so that every level of the hierarchy and each of the "
            f"{fwd.chunks} layer chunk(s) hold whole intervals")
    if extra <= PADDING_WARN:
        log.info("%s", line)
        return
    below = next((d for d in range(depth - 1, 0, -1) if _unpadded(solver, d)), None)
    log.warning("%s; depth %s needs none", line, " or ".join(str(d) for d in (below, fwd.n_pad) if d))


def _unpadded(solver, depth: int) -> bool:
    try:
        return solver.layouts(depth)[0].n_pad == depth
    except ValueError:  # too shallow for the layer ranks
        return False


class _StabilityCheck:
    """The coarse-step stability estimate H·ρ of the MGRIT levels (:mod:`lpt.mgrit.stability`): checked when the
    run starts and at every evaluation, logged as ``mgrit/coarse_hrho`` (step × coarse level, NaN where not
    evaluated); the first level that :func:`lpt.mgrit.stability.stability_message` finds unstable is warned
    about once per run, by the rank that writes the log only. Nothing for other solvers."""

    def __init__(self, solver, model, x: jnp.ndarray, warn: bool = True) -> None:
        self.estimate = getattr(solver, "coarse_stability", None)
        self.model, self.x, self.warned = model, x, not warn
        self.blank = np.zeros(0)

    def check(self, params) -> np.ndarray:
        values, message = self.estimate(self.model, params, self.x)
        if np.size(values) == 0:  # one level only (e.g. min_coarse ≥ N): no coarse steps, nothing to log
            self.estimate = None
        if message is not None and not self.warned:
            log.warning("%s", message)
            self.warned = True
        self.blank = np.full(np.shape(values), np.nan)
        return np.asarray(values, np.float64)

    def start(self, params) -> None:
        """The check when the run starts (a warning only; the log's rows come with the evaluations)."""
        if self.estimate is not None:
            self.check(params)

    def row(self, params) -> dict[str, np.ndarray]:
        """``{"coarse_hrho": …}`` for a logged row: the estimate at ``params``, or NaN (``params`` None)."""
        if self.estimate is None:
            return {}
        values = self.blank if params is None else self.check(params)
        return {} if self.estimate is None else {"coarse_hrho": values}
