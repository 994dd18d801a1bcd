"""One row of numbers per run, read from its HDF5 log (DESIGN §6), and the Markdown / CSV tables of them.

Definitions (the same for every run, so a table can be checked against the logs):

- ``final_<metric>``: the last finite value of ``history/<metric>`` (validation metrics are NaN on the steps
  that were not evaluated);
- ``time_per_step_s``: (time_s[-1] − time_s[0]) / (step[-1] − step[0]) — the wall time per optimisation step
  after the first logged step, so compilation is left out (NaN with fewer than two rows);
- ``fwd_factor_mean`` / ``bwd_factor_mean``: the mean over steps of the finite per-step convergence factors
  ``mgrit/fwd_factor`` / ``mgrit/bwd_factor`` — each the geometric mean of ‖r_k‖/‖r_{k−1}‖ over the cycles
  k ≥ 2 of the step (NaN for serial runs and for one-cycle solves).

Runs are named (column ``run``, legends) by the configuration settings that differ between them, as Hydra
overrides (:func:`labels_from_configs`), unless names are given.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from lpt.logging import read_run

METRICS = ("loss", "objective", "train_acc", "val_acc", "train_mse", "val_mse")
COLUMNS = ("run", "dataset", "depth", "solver", "grid", "steps", "final_loss", "final_train_acc", "final_val_acc",
           "final_train_mse", "final_val_mse", "time_per_step_s", "total_time_s", "fwd_factor_mean",
           "bwd_factor_mean")


def last_finite(values: np.ndarray | None) -> float:
    """The last finite entry of a 1-D array (NaN if none or no array)."""
    if values is None:
        return math.nan
    finite = np.flatnonzero(np.isfinite(values))
    return float(values[finite[-1]]) if finite.size else math.nan


def finite_mean(values: np.ndarray | None) -> float:
    """Mean of the finite entries (NaN if none)."""
    if values is None:
        return math.nan
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def time_per_step(step: np.ndarray, time_s: np.ndarray) -> float:
    """Wall time per step after the first logged row (see the module docstring)."""
    if step is None or len(step) < 2 or step[-1] == step[0]:
        return math.nan
    return float((time_s[-1] - time_s[0]) / (step[-1] - step[0]))


def _config(attrs: dict[str, Any]) -> dict[str, Any]:
    """The resolved run configuration stored in a log's root attribute ``config`` (YAML; empty if none)."""
    return yaml.safe_load(attrs.get("config", "") or "") or {}


@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run and the arrays the plots need."""

    row: dict[str, Any]
    history: dict[str, np.ndarray]
    mgrit: dict[str, np.ndarray]
    label: str


def summarize(path: str | os.PathLike, label: str | None = None) -> RunSummary:
    """Read one run log (file or run directory) into a :class:`RunSummary`."""
    rec = read_run(path)
    h, g = rec.history, rec.mgrit
    cfg = _config(rec.attrs)
    grid = rec.attrs.get("grid", (1, 1))
    grid_txt = "x".join(str(int(v)) for v in np.atleast_1d(grid))
    run_dir = Path(rec.path).parent
    label = label or run_dir.name
    row: dict[str, Any] = {
        "run": label,
        "dataset": (cfg.get("dataset") or {}).get("name", ""),
        "depth": (cfg.get("model") or {}).get("depth", ""),
        "solver": (cfg.get("solver") or {}).get("name", ""),
        "grid": grid_txt,
        "steps": int(h["step"][-1]) if "step" in h and len(h["step"]) else 0,
    }
    for m in ("loss", "train_acc", "val_acc", "train_mse", "val_mse"):
        row[f"final_{m}"] = last_finite(h.get(m))
    row["time_per_step_s"] = time_per_step(h.get("step"), h.get("time_s"))
    row["total_time_s"] = float(h["time_s"][-1]) if "time_s" in h and len(h["time_s"]) else math.nan
    row["fwd_factor_mean"] = finite_mean(g.get("fwd_factor"))
    row["bwd_factor_mean"] = finite_mean(g.get("bwd_factor"))
    return RunSummary(row=row, history=h, mgrit=g, label=label)


def unique_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short distinct names for run directories: the last path parts that tell them apart."""
    parts = [Path(p).resolve().parts if Path(p).is_dir() else Path(p).resolve().parent.parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


IGNORED_KEYS = re.compile(r"^(hydra|data_dir|resume)(\.|$)|(^|[._])(dir|path|file)s?$")
"""Configuration keys left out of run labels: Hydra's own settings, where the data and a resumed run lie,
and keys naming folders or files (they differ per run without changing what is computed)."""


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``{"solver": {"cfactor": 4}}`` → ``{"solver.cfactor": 4}``)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def override_value(value: Any) -> str:
    """``value`` as written in a Hydra override (``true``, ``null``, ``[2,4]``; strings quoted where needed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if isinstance(value, str) and (not text or any(c in text for c in " ,=[]{}()'\"\\:")):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The flattened keys whose values differ between ``configs`` (in the order of the configs' keys), without
    :data:`IGNORED_KEYS`. A key missing from some configs counts only if no group above it changes its ``name``
    (``solver.cfactor`` is implied by ``solver.name=mgrit`` against ``solver.name=serial``)."""
    flats = [flatten(c) for c in configs]
    missing = object()

    def values(key: str) -> set[str | object]:
        return {override_value(f[key]) if key in f else missing for f in flats}

    def implied(key: str) -> bool:
        parts = key.split(".")
        names = (".".join(parts[:i] + ["name"]) for i in range(1, len(parts)))
        return any(name != key and len(values(name)) > 1 for name in names)

    keys = dict.fromkeys(k for f in flats for k in f if not IGNORED_KEYS.search(k))
    out = []
    for key in keys:
        vals = values(key)
        present = vals - {missing}
        if len(present) > 1 or (missing in vals and not implied(key)):
            out.append(key)
    return out


def labels_from_configs(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Names of runs (files or run directories) from their configurations: the settings that differ between
    them as Hydra overrides (``solver.name=mgrit solver.cfactor=4``; :func:`differing_keys`). A run none of whose
    settings differ is named by its directory, and equal names get the directory appended; with one run, or none
    differing, the directory names of :func:`unique_labels`."""
    dirs = unique_labels(paths)
    if len(paths) < 2:
        return dirs
    configs = [_config(read_run(p).attrs) for p in paths]
    keys = differing_keys(configs)
    if not keys:
        return dirs
    flats = [flatten(c) for c in configs]
    labels = [" ".join(f"{k}={override_value(f[k])}" for k in keys if k in f) or d for f, d in zip(flats, dirs)]
    return [f"{lab} ({d})" if labels.count(lab) > 1 else lab for lab, d in zip(labels, dirs)]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.6g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """The rows as a Markdown table; columns that are NaN in every row are left out."""
    cols = [c for c in columns if any(not (isinstance(r.get(c), float) and math.isnan(r.get(c))) for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike, columns: Sequence[str] = COLUMNS) -> Path:
    """The rows as CSV (full precision, NaN written as ``nan``)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: (repr(r[c]) if isinstance(r.get(c), float) else r.get(c, "")) for c in columns})
    return path
