"""Turn a composed run configuration into objects: data set, model, solver, optimiser, loop settings.

The range and type checks of the loop settings and of the data-dependent sizes live here; an error names the
option, the value and what would be valid. :func:`lpt.train.validate.validate_config` runs every check of the
configuration before anything is loaded or compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np

from lpt.data import DataError, Dataset, load_dataset
from lpt.model import ResNet
from lpt.model.parareal import PARAREAL_KEYS, ParaRealNet
from lpt.model.transformer import TRANSFORMER_KEYS, Transformer

MODEL_KEYS = ("depth", "width", "T", "activation", "layer", "opening", "kernel_size", "init_scale",
              "gamma_tik", "gamma_ddt", "gamma_class", "conv_impl", "conv_layout")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the option, the value and what is valid."""


def _int(cfg: Mapping[str, Any], key: str, prefix: str, *, minimum: int, allow_none: bool = False,
         default: int | None = None) -> int | None:
    value = cfg.get(key, default)
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{prefix}.{key}={value!r} must be an integer ≥ {minimum}{extra}")
    return value


NonFinitePolicy = Literal["reduce_lr", "serial", "stop"]
NONFINITE_POLICIES = ("reduce_lr", "serial", "stop")
"""What the loop does after a step with a non-finite objective, gradient, parameters or solver state (the
update is rejected first): multiply the step size by ``train.lr_factor`` / recompute the step with the serial
solver / stop with a checkpoint of the last good state."""


@dataclass(frozen=True)
class LoopSettings:
    """Settings of the training loop (config group ``train`` and ``logging``)."""

    steps: int
    batch_size: int | None  # None: full batch
    eval_every: int
    log_every: int
    checkpoint_every: int
    eval_chunk: int
    progress: bool
    on_nonfinite: NonFinitePolicy = "reduce_lr"
    lr_factor: float = 0.5
    max_rejections: int = 10
    inject_nan_at_step: int | None = None  # testing only: this step's inputs are NaN for the configured solver
    inject_error_at_step: int | None = None  # testing only: the last process raises an error at this step

    @classmethod
    def from_config(cls, train: Mapping[str, Any], logging: Mapping[str, Any]) -> "LoopSettings":
        progress = logging.get("progress", True)
        if not isinstance(progress, bool):
            raise ConfigError(f"logging.progress={progress!r} must be true or false")
        policy = train.get("on_nonfinite", "reduce_lr")
        if policy not in NONFINITE_POLICIES:
            raise ConfigError(f"train.on_nonfinite={policy!r} is not valid; choose one of {list(NONFINITE_POLICIES)}")
        factor = train.get("lr_factor", 0.5)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
            raise ConfigError(f"train.lr_factor={factor!r} must be a number in (0, 1) (the step size is multiplied "
                              f"by it after each rejected step)")
        return cls(
            steps=_int(train, "steps", "train", minimum=1),
            batch_size=_int(train, "batch_size", "train", minimum=1, allow_none=True),
            eval_every=_int(train, "eval_every", "train", minimum=1),
            log_every=_int(logging, "log_every", "logging", minimum=1),
            checkpoint_every=_int(train, "checkpoint_every", "train", minimum=1),
            eval_chunk=_int(train, "eval_chunk", "train", minimum=1),
            progress=progress,
            on_nonfinite=policy,
            lr_factor=float(factor),
            max_rejections=_int(train, "max_rejections", "train", minimum=1, default=10),
            inject_nan_at_step=_int(train, "inject_nan_at_step", "train", minimum=1, allow_none=True),
            inject_error_at_step=_int(train, "inject_error_at_step", "train", minimum=1, allow_none=True),
        )


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Load the data set of config group ``dataset`` (all keys but ``name`` are loader options).

    Every loader's result passes :func:`check_finite`, so NaN or inf in any file stops the run here.
    """
    ds = dict(cfg["dataset"])
    name = ds.pop("name", None)
    return check_finite(load_dataset(name, data_dir=cfg.get("data_dir"), seed=cfg.get("seed", 0), **ds))


def check_finite(data: Dataset) -> Dataset:
    """Raise :class:`DataError` if a feature or target of ``data`` is NaN or ±inf; else return ``data``.

    The message names the data set, the array, how many values are bad and the first bad sample.
    """
    for split, array in (("training features", data.x_train), ("training targets", data.y_train),
                         ("validation features", data.x_val), ("validation targets", data.y_val)):
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
            raise DataError(f"{data.name}: the {split} hold {int(bad.sum())} non-finite values (NaN or inf), the "
                            f"first in sample {first} (counting from 0): the data files are corrupt or have missing "
                            f"values; repair or replace them (see the data set's source)")
    return data


ARCHITECTURES = ("resnet", "parareal", "transformer")


def build_model(model_cfg: Mapping[str, Any], data: Dataset):
    """Build the network of config group ``model`` (``arch``: resnet | parareal | transformer) for the shapes of
    ``data``."""
    arch = model_cfg.get("arch", "resnet")
    if arch == "parareal":
        return _build_parareal(model_cfg, data)
    if arch == "transformer":
        return _build_transformer(model_cfg, data)
    if arch != "resnet":
        raise ConfigError(f"model.arch={arch!r} is not a known architecture; choose one of {list(ARCHITECTURES)}")
    unknown = sorted(set(model_cfg) - set(MODEL_KEYS) - {"arch"})
    if unknown:
        raise ConfigError(f"model: unknown option(s) {unknown}; valid options are {list(MODEL_KEYS)}")
    kwargs = {k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg and model_cfg[k] is not None}
    kwargs.setdefault("opening", "conv" if kwargs.get("layer") == "conv" else "dense")
    for key in ("T", "init_scale", "gamma_tik", "gamma_ddt", "gamma_class"):
        if isinstance(kwargs.get(key), bool) or not isinstance(kwargs.get(key, 0.0), (int, float)):
            raise ConfigError(f"model.{key}={kwargs[key]!r} must be a number")
    return ResNet(input_shape=data.x_train.shape[1:], num_outputs=data.num_outputs, task=data.task, **kwargs)


def _build_parareal(model_cfg: Mapping[str, Any], data: Dataset) -> ParaRealNet:
    """The parareal net of config group ``model`` (``arch: parareal``): the ResNet options checked and built as
    for ``arch: resnet``; ``num_parallel``, ``coarse_units`` and ``precond`` are the parareal options."""
    unknown = sorted(set(model_cfg) - set(MODEL_KEYS) - set(PARAREAL_KEYS) - {"arch"})
    if unknown:
        raise ConfigError(f"model: unknown option(s) {unknown} for model.arch=parareal; valid options are "
                          f"{list(MODEL_KEYS) + list(PARAREAL_KEYS)}")
    resnet = build_model({**{k: v for k, v in model_cfg.items() if k in MODEL_KEYS}, "arch": "resnet"}, data)
    return ParaRealNet(resnet=resnet, num_parallel=model_cfg.get("num_parallel", 4),
                       coarse_units=model_cfg.get("coarse_units"), precond=model_cfg.get("precond"))


def _build_transformer(model_cfg: Mapping[str, Any], data: Dataset) -> Transformer:
    """The transformer of config group ``model`` (``arch: transformer``, :data:`TRANSFORMER_KEYS`): a vision
    transformer on image classification data, a causal character model on sequence data."""
    unknown = sorted(set(model_cfg) - set(TRANSFORMER_KEYS) - {"arch"})
    if unknown:
        raise ConfigError(f"model: unknown option(s) {unknown} for model.arch=transformer; valid options are "
                          f"{list(TRANSFORMER_KEYS)}")
    # null is a value of causal (decided by the task); of the other options it means the default
    kwargs = {k: v for k, v in model_cfg.items() if k in TRANSFORMER_KEYS and (v is not None or k == "causal")}
    return Transformer(input_shape=data.x_train.shape[1:], num_outputs=data.num_outputs, task=data.task, **kwargs)


def check_batch(loop: LoopSettings, data: Dataset, optimizer_name: str) -> None:
    """Batch size against the data size; L-BFGS needs full batches."""
    n = data.x_train.shape[0]
    if loop.batch_size is not None and loop.batch_size > n:
        raise ConfigError(f"train.batch_size={loop.batch_size} exceeds the {n} training samples of "
                          f"{data.name}; choose at most {n} or null (full batch)")
    if optimizer_name == "lbfgs" and loop.batch_size not in (None, n):
        raise ConfigError(f"optimizer=lbfgs needs full-batch training (its line search compares objective "
                          f"values); set train.batch_size=null, not {loop.batch_size}")


def check_dtype(value: Any) -> str:
    """``dtype`` must be float32 or float64."""
    if value not in ("float32", "float64"):
        raise ConfigError(f"dtype={value!r} is not valid; choose float32 or float64")
    return value
