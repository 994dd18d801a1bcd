"""Schemas of the config groups ``solver`` (serial, mgrit), ``optimizer`` (sgd, adam, lbfgs), ``parallel``,
``train``, ``logging`` and of the top level of a run configuration (configs/train.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from lpt.config.choices import BACKENDS, CYCLES, RESTRICTIONS
from lpt.config.fields import option


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _cfactor_ok(value: Any) -> bool:
    """An integer ≥ 2 or a non-empty list of them (one per level)."""
    factors = value if isinstance(value, (list, tuple)) else [value]
    return len(factors) >= 1 and all(_is_count(m, 2) for m in factors)


# --- solver -------------------------------------------------------------------------------------------------
def _cycles(default: int, what: str):
    return option(default, what, min=1)


@dataclass
class MGRITSolverOptions:
    """Forward and adjoint FAS-MGRIT, few cycles per step (configs/solver/mgrit.yaml; DESIGN §2–3)."""

    name: str = option("mgrit", "serial | mgrit", choices=("serial", "mgrit"))
    cfactor: Any = option(4, "coarsening factor m (or a list, one per level)", accepts=_cfactor_ok,
                          valid="an integer ≥ 2 or a non-empty list of such integers, one per level")
    max_levels: int = option(10, "levels at most; coarsening stops at min_coarse steps (1 = serial)", min=1)
    min_coarse: int = option(2, "a level with at most this many steps is solved serially", min=1)
    nrelax: int = option(1, "CF-sweeps after the first F: 0 = F-relaxation, 1 = FCF", min=0)
    nrelax_fine: Optional[int] = option(0, "the same on the finest level (null = nrelax)", min=0)
    cycle: str = option("V", "V | F | FMG", choices=CYCLES)
    fwd_iters: int = _cycles(3, "forward cycles per training step (with control=adaptive: the least)")
    bwd_iters: int = _cycles(3, "adjoint cycles per training step (fewer leave a biased gradient)")
    abs_tol: float = option(0.0, "stop the forward solve at ‖r‖ ≤ abs_tol", min=0, note="0 = off")
    rel_tol: float = option(0.0, "… or at ‖r‖ ≤ rel_tol·‖r_0‖", min=0, note="0 = off")
    bwd_levels: Optional[int] = option(None, "levels of the adjoint solve (null = max_levels)", min=1)
    bwd_tol: Optional[float] = option(None, "abs_tol of the adjoint solve (null = abs_tol)", min=0)
    restrict: str = option("inject", "coarse weights: inject | average", choices=RESTRICTIONS)
    warm_start: Any = option("auto", "previous step's states as initial guess; auto = true for full-batch training",
                             accepts=lambda v: isinstance(v, bool) or v == "auto", valid="auto, true or false")
    on_divergence: str = option("serial", "serial (recompute the step serially, logged) | error",
                                choices=("serial", "error"))
    interval_batch: Any = option("auto", "intervals per vectorised step call: auto (CPU: what fits a cache, else "
                                         "all) | 0 (all) | k",
                                 accepts=lambda v: v == "auto" or _is_count(v, 0),
                                 valid="auto, 0 (all intervals in one vmap) or an integer k ≥ 1")
    skip_first_down: bool = option(False, "XBraid's skip: the first cycle after a coarse guess skips relaxation "
                                          "below the finest level")
    control: str = option("fixed", "fixed: fwd_iters/bwd_iters cycles | adaptive: cycles to a relative residual, "
                                   "bias checks", choices=("fixed", "adaptive"))
    growth_cycles: int = option(2, "fixed: up to this many more forward cycles while the residual is above its "
                                   "start", min=0, note="0 = off")
    bwd_growth_cycles: Optional[int] = option(0, "the same for the adjoint solve (null = growth_cycles)", min=0)
    control_tol: float = option(1e-2, "adaptive: stop a solve at ‖r‖ ≤ control_tol·10^-mode·‖states‖",
                                above=0, below=1)
    control_max_iters: int = option(6, "adaptive: cycles per solve at most", min=1)
    control_every: int = option(50, "adaptive: compare with the exact gradient every this many steps", min=1)
    control_min_cos: float = option(0.95, "adaptive: a cosine below this tightens the tolerance ten-fold",
                                    min=-1, below=1)
    control_tightenings: int = option(2, "adaptive: after this many tightenings the next bias switches to serial "
                                         "training", min=0)


@dataclass
class SerialSolverOptions(MGRITSolverOptions):
    """Serial propagation (lax.scan) and jax.grad: the reference solver (configs/solver/serial.yaml). It takes
    the mgrit keys too, unused (a preset sets them for a run with solver=mgrit)."""

    name: str = option("serial", "serial | mgrit", choices=("serial", "mgrit"))


SOLVER_SCHEMAS: dict[str, type] = {"serial": SerialSolverOptions, "mgrit": MGRITSolverOptions}


# --- optimizer ----------------------------------------------------------------------------------------------
def _name(default: str):
    return option(default, "sgd | adam | lbfgs", choices=("sgd", "adam", "lbfgs"))


def _lr(default: float, what: str = "step size"):
    return option(default, what, above=0)


def _weight_decay(what: str):
    return option(0.0, what, min=0, note="0 = off")


def _clip_norm():
    return option(0.0, "global gradient-norm clipping: u ← u·clip_norm/‖u‖ where ‖u‖ > clip_norm", min=0,
                  note="0 = off")


_DECAY = "decoupled weight decay, θ ← θ − lr·(direction + weight_decay·θ)"


@dataclass
class SGDOptions:
    name: str = _name("sgd")
    lr: float = _lr(0.01)
    momentum: float = option(0.9, "heavy-ball momentum (0: plain SGD)", min=0, below=1)
    nesterov: bool = option(False, "Nesterov momentum")
    weight_decay: float = _weight_decay(_DECAY)
    clip_norm: float = _clip_norm()


@dataclass
class AdamOptions:
    name: str = _name("adam")
    lr: float = _lr(0.01)
    b1: float = option(0.9, "decay of the first-moment average", min=0, below=1)
    b2: float = option(0.999, "decay of the second-moment average", min=0, below=1)
    eps: float = option(1e-8, "added to √v in the denominator", min=0)
    weight_decay: float = _weight_decay(_DECAY)
    clip_norm: float = _clip_norm()


@dataclass
class LBFGSOptions:
    """optax L-BFGS with its zoom line search (full batch only)."""

    name: str = _name("lbfgs")
    lr: float = _lr(1.0, "scale of the line search's first step")
    memory_size: int = option(10, "L-BFGS history length", min=1)
    weight_decay: float = _weight_decay("not available with lbfgs (regularise in the objective: model.gamma_tik)")
    clip_norm: float = _clip_norm()


OPTIMIZER_SCHEMAS: dict[str, type] = {"sgd": SGDOptions, "adam": AdamOptions, "lbfgs": LBFGSOptions}


# --- parallel, train, logging, top level --------------------------------------------------------------------
_POSITIVE = "a positive integer"


@dataclass
class ParallelOptions:
    """Processor grid data × layers (configs/parallel/: single, mesh, mpi)."""

    name: str = option("single", "single (one device) | mesh (devices of one or more JAX processes) | mpi (one "
                                 "rank per device)", choices=BACKENDS)
    data: int = option(1, "data-parallel size (ranks hold different samples)", min=1, valid=_POSITIVE)
    layers: int = option(1, "layer-parallel size (contiguous layer chunks; needs solver=mgrit)", min=1,
                         valid=_POSITIVE)
    processes: int = option(1, "mesh: JAX processes (> 1: jax.distributed, one global mesh)", min=1,
                            valid=_POSITIVE)
    coordinator: Optional[str] = option(None, "mesh: host:port of process 0 (null: detected under srun / mpirun)")
    process_id: Optional[int] = option(None, "mesh: this process's number 0..processes-1 (null: detected)", min=0)
    heartbeat_s: int = option(100, "mesh: a process silent this long (seconds) is dead: the others end", min=1,
                              valid=_POSITIVE, note="seconds")


NONFINITE_POLICIES = ("reduce_lr", "serial", "stop")


@dataclass
class TrainOptions:
    """The training loop (configs/train.yaml, group ``train``)."""

    steps: int = option(1000, "optimisation steps", min=1)
    batch_size: Optional[int] = option(None, "samples per step; null: full batch", min=1)
    eval_every: int = option(50, "validation every k steps (and at the last step)", min=1)
    checkpoint_every: int = option(250, "atomic checkpoint every k steps (and at the last step)", min=1)
    eval_chunk: int = option(4096, "samples per evaluation chunk", min=1)
    on_nonfinite: str = option("reduce_lr", "after a rejected step with NaN/inf: reduce_lr (step size × lr_factor) "
                                            "| serial (recompute it serially) | stop (exit 3)",
                               choices=NONFINITE_POLICIES)
    lr_factor: float = option(0.5, "step-size factor after each rejected step", above=0, below=1)
    max_rejections: int = option(10, "this many consecutive rejected steps stop the run", min=1)
    inject_nan_at_step: Optional[int] = option(None, "testing only: this step's inputs are NaN", min=1)
    inject_error_at_step: Optional[int] = option(None, "testing only: the last process raises an error at this step",
                                                 min=1)


@dataclass
class LoggingOptions:
    log_every: int = option(1, "history row every k steps (each row is flushed to the HDF5 file)", min=1)
    progress: bool = option(True, "progress bar on interactive terminals (never in batch logs)")


def _group(help: str) -> Any:
    return field(default=None, metadata={"help": help, "group": True})


@dataclass
class RunOptions:
    """The top level of a run configuration (configs/train.yaml); the groups have their own schemas."""

    seed: int = option(0, "initial weights, generated data, minibatch order", min=0, below=2**32,
                       valid="an integer with 0 ≤ seed < 2**32 (the JAX random key holds 32 bits)")
    data_dir: Optional[str] = option(None, "folder of the data files; null: $LPT_DATA_DIR, else ~/.cache/lpt/data",
                                     accepts=_is_path, valid="a path (or null)")
    resume: Optional[str] = option(None, "run directory (or its checkpoint.npz) to continue; auto: this run "
                                         "directory's own checkpoint if there is one",
                                   accepts=_is_path, valid="a path (or null)")
    dtype: str = option("float32", "precision of parameters, states and arithmetic", choices=("float32", "float64"))
    dataset: Any = _group("config group dataset")
    model: Any = _group("config group model")
    solver: Any = _group("config group solver")
    optimizer: Any = _group("config group optimizer")
    parallel: Any = _group("config group parallel")
    train: Any = _group("config group train")
    logging: Any = _group("config group logging")
