"""Turn a composed run configuration into objects: data set, model, solver, optimiser, loop settings.

All range and type checks on the configuration happen here, before anything is compiled; an error names the
option, the value and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from lpt.data import Dataset, load_dataset
from lpt.model import ResNet

MODEL_KEYS = ("depth", "width", "T", "activation", "layer", "opening", "kernel_size", "init_scale",
              "gamma_tik", "gamma_ddt", "gamma_class")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the option, the value and what is valid."""


def _int(cfg: Mapping[str, Any], key: str, prefix: str, *, minimum: int, allow_none: bool = False) -> int | None:
    value = cfg.get(key)
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{prefix}.{key}={value!r} must be an integer ≥ {minimum}{extra}")
    return value


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

    @classmethod
    def from_config(cls, train: Mapping[str, Any], logging: Mapping[str, Any]) -> "LoopSettings":
        return cls(
            steps=_int(train, "steps", "train", minimum=0),
            batch_size=_int(train, "batch_size", "train", minimum=1, allow_none=True),
            eval_every=_int(train, "eval_every", "train", minimum=1),
            log_every=_int(logging, "log_every", "logging", minimum=1),
            checkpoint_every=_int(train, "checkpoint_every", "train", minimum=1),
            eval_chunk=_int(train, "eval_chunk", "train", minimum=1),
            progress=bool(logging.get("progress", True)),
        )


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Load the data set of config group ``dataset`` (all keys but ``name`` are loader options)."""
    ds = dict(cfg["dataset"])
    name = ds.pop("name", None)
    return load_dataset(name, data_dir=cfg.get("data_dir"), seed=cfg.get("seed", 0), **ds)


ARCHITECTURES = ("resnet", "parareal")


def build_model(model_cfg: Mapping[str, Any], data: Dataset):
    """Build the network of config group ``model`` (``arch``: resnet | parareal) for the shapes of ``data``."""
    arch = model_cfg.get("arch", "resnet")
    if arch == "parareal":
        from lpt.model.parareal import ParaRealNet

        return ParaRealNet.from_config(model_cfg, data)
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
