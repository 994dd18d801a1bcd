"""One check of a whole run configuration, before any data is loaded or anything is compiled; it returns what it
built (:class:`Plan`), which the training loop completes for the data instead of building again.

:func:`validate_config` checks every option of every config group against the schema (:mod:`lpt.config`: type,
range or choices, unknown keys) and raises a :class:`~lpt.config.ConfigError` (or the
:class:`~lpt.model.ModelError` of the model's own checks) whose message names the option, the value and what
would be valid. Then it checks what needs several options at once by constructing the objects the run will
build (``ResNet``/``ParaRealNet``/``Transformer``, ``MGRITSolver``, the optimiser, ``ProcessorGrid``) from the
configuration alone, and adds what those cannot know without each other: bounds of the solver options by the
depth, and a lower bound of the memory the model needs. Checks that need the
data (batch size against the training set, convolutions against image inputs, data-set specific sizes) run
when the data is loaded, still before compilation: :func:`lpt.train.build.for_data` completes the plan's model
for the data's shapes (the model's own checks of them run there), :func:`lpt.train.solver.for_batch` resolves
the solver's ``warm_start: auto`` by the batch. The optimiser is built once, by the loop (its clipping norm
depends on the layer sharding); here :func:`lpt.train.optim.check_optimizer` runs its checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from lpt.config import ConfigError, check_config
from lpt.config.groups import ResNetModel, TransformerModel
from lpt.config.run import LBFGSOptions
from lpt.data import Dataset
from lpt.train.build import LoopSettings, build_model
from lpt.train.memory import device_memory, gib
from lpt.parallel.grid import ProcessorGrid
from lpt.train.optim import check_optimizer
from lpt.train.solver import Solver, make_solver

MEMORY_CHECK_FROM = 2**30
"""Memory lower bounds above this many bytes are compared with the machine's memory."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _wrap(exc: ValueError, group: str) -> ConfigError:
    """A ConfigError with the message of a constructor's ValueError (prefixed by the group if it lacks it)."""
    message = str(exc)
    return ConfigError(message if group in message else f"{group}: {message}")


@dataclass(frozen=True)
class Plan:
    """What :func:`validate_config` built from the configuration alone; the run uses these objects, completed
    for the data (:func:`lpt.train.build.for_data`, :func:`lpt.train.solver.for_batch`), never built again."""

    grid: ProcessorGrid
    loop: LoopSettings
    model: Any  # ResNet / ParaRealNet / Transformer on a probe input (one sample of the input's kind)
    solver: Solver  # warm_start: auto resolved for full batches


def validate_config(cfg: Mapping[str, Any]) -> Plan:
    """Check every option of the resolved run configuration ``cfg``; return what was built, or raise.

    Raises:
        ConfigError: an option has the wrong type, is out of range or unknown (the schema's check,
            :func:`lpt.config.check_config`), or options conflict; the message names the option (as
            ``group.key=value``), the value and what is valid.
        ModelError: a model option is invalid (the model's own check, same kind of message).
    """
    check_config(cfg)
    grid = _parallel_grid(cfg["parallel"])
    loop = LoopSettings.from_config(cfg["train"], cfg["logging"])
    model = _check_model(cfg["model"])
    if cfg["model"].get("arch") == "parareal" and cfg["solver"].get("name") != "serial":
        raise ConfigError(f"model.arch=parareal is trained end-to-end by ordinary backpropagation: use "
                          f"solver=serial, not solver={cfg['solver'].get('name')}")
    solver = _check_solver(cfg["solver"], model.depth)
    try:
        check_optimizer(cfg["optimizer"])
    except ValueError as exc:
        raise _wrap(exc, "optimizer") from exc
    _check_dataset_sizes(cfg["dataset"])
    _check_memory(cfg, loop, model)
    return Plan(grid, loop, model, solver)


def _parallel_grid(parallel: Mapping[str, Any]) -> ProcessorGrid:
    """The processor grid, by its own check of several ``parallel`` options at once (processes > 1 needs mesh,
    process_id < processes, single is 1 × 1)."""
    try:
        return ProcessorGrid.from_config(parallel)
    except ValueError as exc:
        raise _wrap(exc, "parallel") from exc


def _probe_dataset(model_cfg: Mapping[str, Any]) -> Dataset:
    """A one-sample data set that fits any model (image inputs for convolutional layers): for the data-free
    checks."""
    shape = (1,) if model_cfg.get("layer", ResNetModel.layer) == "dense" else (1, 1, 1)
    if model_cfg.get("arch") == "transformer":  # one image patch (the sequence-only checks run with the data)
        patch = model_cfg.get("patch", TransformerModel.patch)
        shape = (patch, patch, 1) if isinstance(patch, int) and 0 < patch < 1024 else (1, 1, 1)
    x = np.zeros((1, *shape), np.float32)
    y = np.zeros((1,), np.int32)
    return Dataset(x, y, x, y, "classification", 1, "probe")


def _check_model(model_cfg: Mapping[str, Any]):
    """The model's own checks of several options at once (ResNet / ParaRealNet / Transformer), on a probe
    input."""
    return build_model(model_cfg, _probe_dataset(model_cfg))


def _check_solver(solver_cfg: Mapping[str, Any], depth: int) -> Solver:
    """The solver (built for full batches), by its own checks, then the bounds that depend on the depth N.

    MGRIT with F- or FCF-relaxation is exact after at most N cycles, and after N relaxation sweeps
    relaxation alone is exact; a coarsening factor above N only pads the level with identity steps. Larger
    values cannot help, so they are refused (they would also unroll or loop for ever).
    """
    try:
        solver = make_solver(solver_cfg, full_batch=True)
    except ValueError as exc:
        raise _wrap(exc, "solver") from exc
    fwd, bwd = getattr(solver, "fwd", None), getattr(solver, "bwd", None)
    if fwd is None:
        return solver
    factors = fwd.cfactor if isinstance(fwd.cfactor, tuple) else (fwd.cfactor,)
    if max(factors) > max(depth, 2):
        raise ConfigError(f"solver.cfactor={solver_cfg.get('cfactor')!r} exceeds model.depth={depth}: a coarsening "
                          f"factor above the number of layers only pads the level with identity steps; choose "
                          f"2 ≤ cfactor ≤ {max(depth, 2)}")
    bounds = {"fwd_iters": fwd.max_iter, "bwd_iters": bwd.max_iter, "nrelax": fwd.nrelax,
              "nrelax_fine": fwd.nrelax_fine or 0}
    for key, value in bounds.items():
        if value > depth:
            raise ConfigError(f"solver.{key}={value} exceeds model.depth={depth}: MGRIT is exact after at most "
                              f"N = {depth} cycles (or relaxation sweeps); choose at most {depth}")
    return solver


def _check_dataset_sizes(ds_cfg: Mapping[str, Any]) -> None:
    """Sizes that cannot fit in memory (at 4 bytes a sample) are refused here."""
    for key in ("n_train", "n_val"):
        value = ds_cfg.get(key)
        if _is_int(value) and value * 4 > MEMORY_CHECK_FROM and value * 4 > device_memory():
            raise ConfigError(f"dataset.{key}={value} samples need at least {gib(value * 4)} of memory, more than "
                              f"the {gib(device_memory())} of this machine; choose fewer samples")


def _check_memory(cfg: Mapping[str, Any], loop: LoopSettings, model) -> None:
    """A lower bound of the memory of the layer weights and the stored layer states against the machine's.

    Bound: N·width²·k² weights (k = kernel size for convolutions, 1 for dense), (N_p − 1)·N_c·width²·k² more
    for parareal coarse networks, times the L-BFGS memory where it applies; plus (N + 1)·batch·width states,
    each of the itemsize of ``dtype`` (a batch of one sample where the batch size is not known before loading).
    """
    net = getattr(model, "resnet", model)  # ParaRealNet wraps the ResNet it cuts
    depth, width = net.depth, net.width
    k2 = net.kernel_size**2 if net.layer in ("conv", "conv2") else 1
    units = depth
    if net is not model:
        units += (model.num_parallel - 1) * model.coarse_units
    weights = units * width * width * k2
    if cfg["optimizer"].get("name") == "lbfgs":
        weights *= 1 + 2 * cfg["optimizer"].get("memory_size", LBFGSOptions.memory_size)
    n_train = cfg["dataset"].get("n_train")
    batch = loop.batch_size or (n_train if _is_int(n_train) else 1)
    states = (depth + 1) * batch * width
    itemsize = 8 if cfg.get("dtype") == "float64" else 4
    need = itemsize * (weights + states)
    if need > MEMORY_CHECK_FROM and need > device_memory():
        raise ConfigError(
            f"model.depth={depth}, model.width={width} (batch {batch}) need at least {gib(need)} for layer "
            f"weights and states, more than the {gib(device_memory())} of this machine; choose a smaller "
            f"model.depth, model.width or train.batch_size")
