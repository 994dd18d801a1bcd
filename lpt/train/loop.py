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

from lpt.config.run import RunOptions
from lpt.data import DataError
from lpt.logging import (CHECKPOINT_NAME, LOG_NAME, RunDirBusy, RunDirLock, RunLog, load_checkpoint, resolve_resume,
                         save_checkpoint)
from lpt.logging.null import NullLog
from lpt.model import ModelError
from lpt.parallel import GridError, ProcessorGrid
from lpt.parallel.faults import is_last_process
from lpt.parallel.runtime import Runtime
from lpt.parallel.sharded import ChunkLocal, LayerSharded
from lpt.train.build import ConfigError, LoopSettings, build_dataset, check_batch, for_data
from lpt.train.checks import StabilityCheck, report_padding
from lpt.train.memory import device_memory, estimate_step_memory, gib, memory_message
from lpt.train.nonfinite import NonFiniteGuard, inject_nan
from lpt.train.optim import carries_evaluations, make_optimizer, needs_value_fn
from lpt.train.progress import RunProgress
from lpt.train.signals import Interrupted, StopRequest, StopWhileCompiling
from lpt.train.solver import SerialSolver, for_batch
from lpt.train.state import TrainState, initial_carry, init_state, make_evaluate, make_train_step
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


def _check_parallel(cfg: Mapping[str, Any], grid: ProcessorGrid, loop: LoopSettings, n_train: int) -> None:
    """The processor grid's (config group ``parallel``) fit with the devices, solver, optimiser and batch size."""
    try:
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
    return _Run(cfg, run_dir, setup).train()


@dataclass(frozen=True)
class _Setup:
    """What :func:`_setup` builds from a checked configuration (nothing compiled yet)."""

    dtype: str
    runtime: Runtime
    loop: LoopSettings
    seed: int
    data: Any
    model: Any
    optimizer: Any
    full_batch: bool
    solver: Any


def _setup(cfg: Mapping[str, Any]) -> _Setup:
    """Check the configuration (:func:`validate_config`, which builds grid, loop settings, model and solver), load
    the data, complete model and solver for it and build the runtime and optimiser (no compilation)."""
    plan = validate_config(cfg)
    try:
        plan.grid.connect()  # several JAX processes: before any device is used
    except GridError as exc:
        raise ConfigError(str(exc)) from exc
    dtype = cfg.get("dtype", RunOptions.dtype)
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    loop = plan.loop
    data = build_dataset(cfg)
    model = for_data(plan.model, data)
    check_batch(loop, data, cfg["optimizer"].get("name"))
    full_batch = loop.batch_size in (None, data.x_train.shape[0])
    _check_parallel(cfg, plan.grid, loop, data.x_train.shape[0])
    runtime = Runtime.create(plan.grid)
    solver = runtime.with_comm(for_batch(plan.solver, cfg["solver"], full_batch=full_batch))
    if hasattr(solver, "layouts"):
        solver.layouts(model.depth)  # too many layer ranks for this depth: refused before any work
    # MPI ranks with layer chunks: each keeps its chunk's layers; the clipping norm then sums over the chunks
    runtime, solver = runtime.shard_layers(solver, model.depth)
    optimizer = make_optimizer(cfg["optimizer"], norm=runtime.tree_norm)
    _check_memory(cfg, model, solver, optimizer, data, dtype, loop, runtime)
    return _Setup(dtype, runtime, loop, cfg.get("seed", RunOptions.seed), data, model, optimizer, full_batch, solver)


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


class _Run:
    """One training run: its directory and lock, arrays, state, log and compiled steps (built by ``__init__``),
    and the loop (:meth:`train`) with its pieces: the batch of a step, the rows since the last one, checkpoints,
    the stop on a signal."""

    def __init__(self, cfg: Mapping[str, Any], run_dir, setup: _Setup):
        self.cfg, self.s = cfg, setup
        self._open_run_dir(Path(run_dir))
        try:
            self._arrays()
            self._initial_state()
            self._open_log()
            self._build_steps()
        except BaseException:
            self.lock.release()
            raise

    def _open_run_dir(self, run_dir: Path) -> None:
        """The run directory (a resumed run's own), its checkpoint path, and the lock of the writing process."""
        self.resume = resolve_resume(self.cfg.get("resume"), run_dir)
        self.run_dir = self.resume.parent if self.resume is not None else run_dir
        self.ckpt_path = self.run_dir / CHECKPOINT_NAME
        try:
            # held until the run ends by the process that writes files: two runs never write the same files
            self.lock = RunDirLock(self.run_dir) if self.s.runtime.is_root else NullLog()
        except RunDirBusy as exc:
            raise ConfigError(str(exc)) from exc

    def _arrays(self) -> None:
        data, dtype = self.s.data, self.s.dtype
        label = dtype if data.task == "regression" else jnp.int32
        self.x_train, self.y_train = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train, label)
        self.x_val, self.y_val = jnp.asarray(data.x_val, dtype), jnp.asarray(data.y_val, label)
        self.n = self.x_train.shape[0]
        self.batch = self.n if self.s.full_batch else self.s.loop.batch_size
        self.perm_cache: dict = {}

    def _initial_state(self) -> None:
        """The state at step 0, or the checkpoint's (``resume``); ``elapsed`` seconds of the run before."""
        s = self.s
        # the whole initialisation on every rank (one random draw), then this rank's chunk (MPI, layer-sharded)
        self.params = s.runtime.local_params(s.model.init(jax.random.PRNGKey(s.seed), jnp.dtype(s.dtype)))
        solver_state = s.runtime.init_solver_state(s.solver, s.model, self.params, self.x_train[:self.batch])
        self.state = init_state(self.params, s.optimizer, solver_state, jnp.asarray(1.0, jnp.float32),
                                count_rejections=True)
        # L-BFGS: the line search's evaluation at the accepted point is the next step's (lpt.train.state.Carried)
        self.carry = carries_evaluations(self.cfg["optimizer"])
        if self.carry:
            self.state = self.state._replace(carried=initial_carry(
                s.model, s.solver, self.state, *self.batch_at(0), comm=s.runtime.step_comm(s.solver),
                wrap=s.runtime.wrap_step(s.solver, s.model, self.params, self.x_train[:self.batch])))
        self.elapsed = 0.0
        self.batch_axis = getattr(s.model, "state_batch_axis", 0)  # of the warm-start states, for checkpoints
        if self.resume:
            try:
                state, meta = load_checkpoint(self.ckpt_path,
                                              s.runtime.checkpoint_template(self.state, self.batch_axis))
            except ValueError as exc:  # another model/optimizer/solver than the checkpoint's
                raise ConfigError(str(exc)) from exc
            self.state = s.runtime.local_state(state, self.batch_axis)  # MPI: this rank's blocks
            self.elapsed = float(meta.get("time_s", 0.0))
            step = int(self.state.step)
            if step >= s.loop.steps:
                raise ConfigError(f"resume={self.cfg.get('resume')}: the checkpoint in {self.run_dir} is at step "
                                  f"{step}, and train.steps={s.loop.steps} asks for no more; set train.steps above "
                                  f"{step} to continue training")
            log.info("resuming %s from step %d", self.run_dir, step)
        # layer-sharded mesh: each device keeps its chunk's parameters, optimiser and warm-start states
        self.state = s.runtime.place_state(self.state, s.solver, s.model, self.params, self.x_train[:self.batch])
        self.start = int(self.state.step)

    def _open_log(self) -> None:
        runtime, grid = self.s.runtime, self.s.runtime.grid
        if not runtime.is_root:  # MPI ranks and JAX processes > 0: no files, no console output
            log.setLevel(logging.WARNING)
        self.runlog = (RunLog(self.run_dir / LOG_NAME, config_yaml=yaml.safe_dump(dict(self.cfg), sort_keys=False),
                              grid=(grid.data, grid.layers),
                              devices=f"{grid.backend}: " + ", ".join(str(d) for d in jax.devices()[: grid.size]),
                              resume=bool(self.resume)) if runtime.is_root else NullLog())
        if self.resume:
            self.runlog.truncate(self.start)
        self.runlog.set_attr("status", "running")  # until the run ends: completed, interrupted or failed

    def _build_steps(self) -> None:
        """The compiled training step (state donated, fault policy inside), its serial fallback, evaluation."""
        s, cfg = self.s, self.cfg
        options = dict(lr=float(cfg["optimizer"]["lr"]), line_search=needs_value_fn(cfg["optimizer"]),
                       comm=s.runtime.step_comm(s.solver), norm=s.runtime.tree_norm,
                       products=s.runtime.products,
                       wrap=s.runtime.wrap_step(s.solver, s.model, self.params, self.x_train[:self.batch]))
        serial = s.solver.exact() if isinstance(s.solver, (ChunkLocal, LayerSharded)) else SerialSolver()
        self.guard = NonFiniteGuard(s.loop, lambda: make_train_step(s.model, serial, s.optimizer, **options),
                                    self.save_last_good, lr_scale=float(self.state.lr_scale),
                                    rejections=int(self.state.rejections))
        # the state is donated: the step replaces it in place instead of holding it twice
        self.train_step = make_train_step(s.model, s.solver, s.optimizer, **options, faults=self.guard.policy(),
                                          donate=True, carry=self.carry)
        self.evaluate = make_evaluate(s.model, s.loop.eval_chunk)
        self.metric = "mse" if s.data.task == "regression" else "acc"  # sequence: per-character accuracy
        # every validation column gets a row per logged step (NaN where not evaluated), so columns stay aligned
        self.not_evaluated = {f"val_{k}": math.nan
                              for k in (("acc", "loss") if self.metric == "acc" else ("mse", "rel_err"))}
        self.raise_on_divergence = getattr(s.solver, "on_divergence", "serial") == "error"
        self.stability = StabilityCheck(s.solver, s.model, self.x_train, warn=s.runtime.is_root)
        self.pending: list = []  # (step, metrics, stats, non-finite or None) since the last row, on the device
        self.final: dict[str, float] = {}

    def checkpoint(self, state: TrainState) -> None:
        state = self.s.runtime.host_state(state, self.batch_axis)  # every process takes part in the gather
        if not self.s.runtime.is_root:
            return
        meta = {"step": int(state.step), "seed": self.s.seed, "time_s": time.perf_counter() - self.t0}
        self.runlog.write_checkpoint(save_checkpoint(self.ckpt_path, state, meta), meta)

    def save_last_good(self, state: TrainState) -> Path:
        self.checkpoint(state)
        return self.ckpt_path

    def batch_at(self, step: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """This process's samples of step ``step``'s batch."""
        if self.s.full_batch:
            xb, yb = self.x_train, self.y_train
        else:
            idx = jnp.asarray(_batch_indices(self.s.seed, step, self.n, self.batch, self.perm_cache))
            xb, yb = self.x_train[idx], self.y_train[idx]
        return self.s.runtime.local_batch(xb, yb)

    def log_rows(self, evaluate_now: bool) -> None:
        """Rows of the steps since the last row (one fetch from the device): each rejected step's, then the last
        step's (with the validation metrics when ``evaluate_now``). Sets the guard's halt if a step ended the run."""
        entries, last = jax.device_get(self.pending), self.pending[-1][0]
        self.pending.clear()
        for done, metrics, stats, nonfinite in entries:
            if nonfinite is None:
                nonfinite = self.guard.review(done, metrics)
            if done != last and not nonfinite:
                continue
            if self.raise_on_divergence and bool(stats.get("diverged", False)):
                raise FloatingPointError(f"MGRIT diverged at step {done} (residuals {stats.get('fwd_residual')}); "
                                         f"set solver.on_divergence=serial to fall back to serial propagation")
            self._row(done, metrics, stats, nonfinite, evaluate_now and done == last and not self.guard.halted)
            if self.guard.halted:  # the later steps left the state as it was
                break
        self.progress.rejected = self.guard.rejected

    def _row(self, done: int, metrics, stats, nonfinite: bool, evaluated: bool) -> None:
        row = {"step": done, "epoch": done * self.batch / self.n, **{k: float(v) for k, v in metrics.items()},
               "nonfinite": float(nonfinite), **self.not_evaluated}
        params = self.s.runtime.whole_params(self.state.params) if evaluated else None  # MPI: a gather
        stats = {**stats, **self.stability.row(params)}
        if evaluated:
            row.update({f"val_{k}": v for k, v in self.evaluate(params, self.x_val, self.y_val).items()})
            self.final = dict(row)
            m = self.metric
            log.info("step %d/%d  loss %.4g  train_%s %.4g  val_%s %.4g", done, self.s.loop.steps, row["loss"],
                     m, row[f"train_{m}"], m, row[f"val_{m}"])
        row["time_s"] = time.perf_counter() - self.t0
        self.runlog.append(row, {k: np.asarray(v, np.float64) for k, v in stats.items()})
        self.progress.logged_row(row, stats)

    def interrupt(self, stop: StopRequest, step: int) -> Interrupted:
        """After a stop signal before step ``step + 1``: rows, checkpoint, status; the exception to raise."""
        if self.pending:
            self.log_rows(False)
        if self.guard.halted:
            raise self.guard.stop(self.state)
        self.checkpoint(self.state)
        self.runlog.set_attr("status", f"interrupted: {stop.name}")
        log.warning("interrupted by %s after step %d: checkpoint written to %s", stop.name, step, self.ckpt_path)
        return Interrupted(stop.signum, step, self.ckpt_path)

    def train(self) -> RunResult:
        s, loop = self.s, self.s.loop
        log.info("%s: N=%d width=%d %s/%s, solver=%s, optimizer=%s, %d training samples, batch %d, steps %d",
                 s.data.name, s.model.depth, s.model.width, s.model.layer, s.model.activation,
                 self.cfg["solver"]["name"], self.cfg["optimizer"]["name"], self.n, self.batch, loop.steps)
        report_padding(s.solver, s.model.depth, self.runlog)
        if s.runtime.layout:
            log.info("%s", s.runtime.layout)
        self.stability.start(s.runtime.whole_params(self.state.params))
        self.progress = RunProgress(loop.steps, self.start, bar=loop.progress and s.runtime.is_root)
        self.t0 = time.perf_counter() - self.elapsed
        # SIGTERM, SIGINT, SIGUSR1: finish the step, checkpoint, exit 128 + signal. MPI ranks agree at every step
        # (an allreduce on the host), several JAX processes at the steps that log a row (a gather, which waits)
        stop = StopRequest(agree=s.runtime.agree_stop())
        stop_every = loop.log_every if s.runtime.grid.processes > 1 else 1
        hint = (f"continue from the checkpoint with resume={self.run_dir}" if self.start
                else "nothing was trained; run the command again to start afresh")
        compiling = StopWhileCompiling(stop, lambda signum: self.runlog.set_attr(
            "status", f"interrupted: {signal.Signals(signum).name}"), hint)
        try:
            for step in range(self.start, loop.steps):
                if (step - self.start) % stop_every == 0 and stop.should_stop():
                    raise self.interrupt(stop, step)
                self._step(step, compiling)
            self.runlog.set_attr("status", "completed")
            if s.runtime.is_root:
                self.progress.summary(loop.steps, self.final, self.run_dir / LOG_NAME)
        except Interrupted:
            raise
        except BaseException as exc:
            self.runlog.set_attr("status", f"failed: {type(exc).__name__}")
            raise
        finally:
            compiling.done()
            stop.restore()
            self.progress.close()
            self.runlog.close()
            self.lock.release()
        return RunResult(run_dir=self.run_dir, log_path=self.run_dir / LOG_NAME, final=self.final)

    def _step(self, step: int, compiling: StopWhileCompiling) -> None:
        """Step ``step + 1``: dispatched without waiting; a row, evaluation and checkpoint when due."""
        loop, done = self.s.loop, step + 1
        xb, yb = self.batch_at(step)
        x_in = inject_nan(xb) if done == loop.inject_nan_at_step else xb  # test hook, normally xb
        if x_in is not xb and self.carry:  # the step evaluates its (changed) batch itself
            self.state = self.state._replace(carried=self.state.carried.lost())
        if done == loop.inject_error_at_step and is_last_process(self.s.runtime):  # test hook
            raise RuntimeError(f"injected fault at step {done} (train.inject_error_at_step, for tests)")
        self.state, metrics, stats = self.train_step(self.state, x_in, yb)
        compiling.done()
        nonfinite = None  # known on the host only under on_nonfinite=serial; else read with the next row
        if self.guard.eager:
            self.state, metrics, nonfinite = self.guard.check(self.state, metrics, xb, yb, done)
        self.pending.append((done, metrics, stats, nonfinite))
        self.progress.step(done, metrics)
        evaluate_now = done % loop.eval_every == 0 or done == loop.steps
        if not (evaluate_now or done % loop.log_every == 0 or nonfinite):
            return
        self.log_rows(evaluate_now)
        if self.guard.halted:  # on_nonfinite=stop or too many rejections: the last good state is saved
            raise self.guard.stop(self.state)
        if done % loop.checkpoint_every == 0 or done == loop.steps:
            self.checkpoint(self.state)
