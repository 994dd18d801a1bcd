"""Reading run logs back: :func:`read_run`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

LOG_NAME = "run.h5"


class RunRecord(NamedTuple):
    """A run log in memory: ``history`` and ``mgrit`` map dataset names to numpy arrays; ``attrs`` the metadata."""

    history: dict[str, np.ndarray]
    mgrit: dict[str, np.ndarray]
    attrs: dict[str, Any]
    path: Path


def find_log(path: str | os.PathLike) -> Path:
    """The log file itself, or ``run.h5`` inside a run directory."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no run log at {p} (expected an HDF5 file or a run directory holding {LOG_NAME})")
    return p


def _open(p: Path) -> h5py.File:
    try:
        return h5py.File(p, "r", locking=False)
    except OSError:  # open in this process with HDF5's lock: the flags must match
        return h5py.File(p, "r")


def read_run(path: str | os.PathLike) -> RunRecord:
    """Read a run log (file or run directory) into arrays.

    Returns:
        RunRecord with ``history["loss"]``, ``history["val_acc"]``, …, ``mgrit["fwd_residual"]`` (steps × cycles), …
    """
    p = find_log(path)
    # without HDF5's file lock: the log of a running job (held open for writing by lpt-train) can be read
    # from another process; rows are flushed whole, and a row being written is cut off (below)
    with _open(p) as f:
        history = {k: v[...] for k, v in f.get("history", {}).items()}
        mgrit = {k: v[...] for k, v in f.get("mgrit", {}).items()}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    rows = min((len(v) for v in (*history.values(), *mgrit.values())), default=0)
    history = {k: v[:rows] for k, v in history.items()}
    mgrit = {k: v[:rows] for k, v in mgrit.items()}
    return RunRecord(history=history, mgrit=mgrit, attrs=attrs, path=p)
