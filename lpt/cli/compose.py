"""Compose a run configuration in Python (notebooks, tests, scripts) exactly as ``lpt-train`` would."""

from __future__ import annotations

from typing import Any, Sequence

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lpt.config import register_schemas


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved run configuration for command-line style ``overrides`` (e.g. ``["+experiment=mnist"]``).

    Example:
        >>> from lpt.cli.compose import compose_config
        >>> from lpt.train import run
        >>> result = run(compose_config(["train.steps=10"]), "runs/notebook")
    """
    register_schemas()  # as lpt-train does: the schemas are in Hydra's ConfigStore (group schema/)
    with initialize_config_module(config_module="lpt.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)
