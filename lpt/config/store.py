"""The schema of each config group and variant, its registration with Hydra's ConfigStore, and the check of a
whole run configuration against it.

The variant of a group is chosen by its discriminating key: ``dataset.name``, ``model.arch``, ``solver.name``,
``optimizer.name``; ``parallel``, ``train`` and ``logging`` have one schema each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lpt.config.fields import ConfigError, check_options, check_value
from lpt.config.groups import DATASET_SCHEMAS, MODEL_SCHEMAS, ResNetModel
from lpt.config.run import (OPTIMIZER_SCHEMAS, SOLVER_SCHEMAS, LoggingOptions, ParallelOptions, RunOptions,
                            TrainOptions)

GROUPS = ("dataset", "model", "solver", "optimizer", "parallel", "train", "logging")

VARIANTS: dict[str, tuple[str | None, str | None, dict[str, type]]] = {
    # group: (discriminating key, its default, schema of each value)
    "dataset": ("name", None, DATASET_SCHEMAS),
    "model": ("arch", "resnet", MODEL_SCHEMAS),
    "solver": ("name", None, SOLVER_SCHEMAS),
    "optimizer": ("name", None, OPTIMIZER_SCHEMAS),
    "parallel": (None, None, {"": ParallelOptions}),
    "train": (None, None, {"": TrainOptions}),
    "logging": (None, None, {"": LoggingOptions}),
}


def schema_for(group: str, values: Mapping[str, Any]) -> tuple[type, str]:
    """(schema, variant text such as ``model.arch=transformer``) of config group ``group`` with ``values``;
    an unknown variant is a :class:`ConfigError` naming the discriminating key."""
    key, default, schemas = VARIANTS[group]
    if key is None:
        return schemas[""], ""
    value = values.get(key, default)
    if not isinstance(value, str) or value not in schemas:
        first = next(iter(schemas.values()))
        check_value(first, next(f for f in dataclasses.fields(first) if f.name == key), value, f"{group}.{key}")
        raise ConfigError(f"{group}.{key}={value!r} is not valid; choose one of {list(schemas)}")
    return schemas[value], (f"{group}.{key}={value}" if group == "model" else "")


def check_group(group: str, values: Mapping[str, Any]) -> type:
    """Check the options ``values`` of config group ``group`` against their schema; return the schema."""
    schema, variant = schema_for(group, values)
    check_options(values, schema, group, variant)
    return schema


def check_config(cfg: Mapping[str, Any]) -> None:
    """Check the type, range or choice of every option of the resolved run configuration ``cfg`` against the
    schema, and refuse unknown keys; raise a one-line :class:`ConfigError` naming ``group.key=value``."""
    for group in GROUPS:
        if not isinstance(cfg.get(group), Mapping):
            raise ConfigError(f"{group}={cfg.get(group)!r}: the config group {group} is missing or not a mapping")
    check_options(cfg, RunOptions, "")
    for group in GROUPS:
        check_group(group, cfg[group])


def schema_nodes() -> list[tuple[str, str, Any]]:
    """(ConfigStore group, name, node) of every schema: ``schema/<group>`` holds one node per option file of
    configs/<group>/ (conv: the ResNet schema with the conv file's defaults), and ``schema/train`` the top level."""
    conv = ResNetModel(layer="conv", depth=8, width=4, T=1.0, activation="relu", opening="conv")
    nodes: list[tuple[str, str, Any]] = [("schema", "train", RunOptions)]
    nodes += [("schema/dataset", name, schema) for name, schema in DATASET_SCHEMAS.items()]
    nodes += [("schema/model", "dense", ResNetModel), ("schema/model", "conv", conv),
              ("schema/model", "parareal", MODEL_SCHEMAS["parareal"]),
              ("schema/model", "transformer", MODEL_SCHEMAS["transformer"])]
    nodes += [("schema/solver", name, schema) for name, schema in SOLVER_SCHEMAS.items()]
    nodes += [("schema/optimizer", name, schema) for name, schema in OPTIMIZER_SCHEMAS.items()]
    nodes += [("schema/parallel", "single", ParallelOptions),
              ("schema/parallel", "mesh", ParallelOptions("mesh", layers=2)),
              ("schema/parallel", "mpi", ParallelOptions("mpi", layers=2))]
    nodes += [("schema/train", "train", TrainOptions), ("schema/logging", "default", LoggingOptions)]
    return nodes


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (group ``schema/<group>``), as structured configs."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, name, node in schema_nodes():
        store.store(group=group, name=name, node=node)
