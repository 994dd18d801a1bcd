"""Turn a composed run configuration into objects: data set, model, solver, optimiser, loop settings.

Types, ranges, choices and defaults of the options are the schema's (:mod:`lpt.config`), checked by
:func:`lpt.train.validate.validate_config` before anything is loaded or compiled; here only the checks that
need the data (batch size against the training set, the model for the data's shapes: :func:`for_data`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np

from lpt.config import ConfigError, check_group
from lpt.config.groups import ParaRealModel, ResNetModel
from lpt.config.run import LoggingOptions, RunOptions, TrainOptions
from lpt.data import DataError, Dataset, load_dataset
from lpt.model import ResNet
from lpt.model.parareal import ParaRealNet
from lpt.model.transformer import TRANSFORMER_KEYS, Transformer

MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ResNetModel) if f.name != "arch")
"""The ResNet's options of config group ``model`` (its schema's fields but ``arch``)."""


NonFinitePolicy = Literal["reduce_lr", "serial", "stop"]
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
    on_nonfinite: NonFinitePolicy = TrainOptions.on_nonfinite
    lr_factor: float = TrainOptions.lr_factor
    max_rejections: int = TrainOptions.max_rejections
    inject_nan_at_step: int | None = None  # testing only: this step's inputs are NaN for the configured solver
    inject_error_at_step: int | None = None  # testing only: the last process raises an error at this step

    @classmethod
    def from_config(cls, train: Mapping[str, Any], logging: Mapping[str, Any]) -> "LoopSettings":
        """The settings of groups ``train`` and ``logging`` (checked by the schema), missing keys at the
        schema's defaults."""
        values = {**dataclasses.asdict(TrainOptions()), **train, **dataclasses.asdict(LoggingOptions()), **logging}
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Load the data set of config group ``dataset`` (all keys but ``name`` are loader options).

    Every loader's result passes :func:`check_finite`, so NaN or inf in any file stops the run here.
    """
    ds = dict(cfg["dataset"])
    name = ds.pop("name", None)
    return check_finite(load_dataset(name, data_dir=cfg.get("data_dir"), seed=cfg.get("seed", RunOptions.seed), **ds))


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


def build_model(model_cfg: Mapping[str, Any], data: Dataset):
    """Build the network of config group ``model`` (``arch``: resnet | parareal | transformer) for the shapes of
    ``data``."""
    check_group("model", model_cfg)  # the schema's checks of this group (for callers without validate_config)
    arch = model_cfg.get("arch", ResNetModel.arch)
    if arch == "parareal":
        return _build_parareal(model_cfg, data)
    if arch == "transformer":
        return _build_transformer(model_cfg, data)
    kwargs = {k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg and model_cfg[k] is not None}
    kwargs.setdefault("opening", "conv" if kwargs.get("layer") == "conv" else "dense")
    return ResNet(input_shape=data.x_train.shape[1:], num_outputs=data.num_outputs, task=data.task, **kwargs)


def for_data(model, data: Dataset):
    """The model that :func:`lpt.train.validate.validate_config` built on a probe input, completed for ``data``:
    its input shape, number of outputs and task (the model's own checks of them run here, before compilation)."""
    shapes = dict(input_shape=data.x_train.shape[1:], num_outputs=data.num_outputs, task=data.task)
    if isinstance(model, ParaRealNet):  # the parareal net cuts the ResNet that sees the data
        return dataclasses.replace(model, resnet=dataclasses.replace(model.resnet, **shapes))
    return dataclasses.replace(model, **shapes)


def _build_parareal(model_cfg: Mapping[str, Any], data: Dataset) -> ParaRealNet:
    """The parareal net of config group ``model`` (``arch: parareal``): the ResNet options checked and built as
    for ``arch: resnet``; ``num_parallel``, ``coarse_units`` and ``precond`` are the parareal options."""
    resnet = build_model({**{k: v for k, v in model_cfg.items() if k in MODEL_KEYS}, "arch": "resnet"}, data)
    return ParaRealNet(resnet=resnet, num_parallel=model_cfg.get("num_parallel", ParaRealModel.num_parallel),
                       coarse_units=model_cfg.get("coarse_units"), precond=model_cfg.get("precond"))


def _build_transformer(model_cfg: Mapping[str, Any], data: Dataset) -> Transformer:
    """The transformer of config group ``model`` (``arch: transformer``, :data:`TRANSFORMER_KEYS`): a vision
    transformer on image classification data, a causal character model on sequence data."""
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
