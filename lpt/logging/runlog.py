"""The HDF5 run log (DESIGN §6): one file per run, appended and flushed at every logged step.

Layout::

    attrs:       config (resolved YAML), lpt_version, jax_version, git_revision, grid, devices, created
    history/     1-D datasets, one row per logged step (step int64, the others float64): step, epoch, loss,
                 objective, train_<metric>, val_<metric> (NaN when not evaluated), grad_norm, lr, time_s, ...
    mgrit/       fwd_residual, bwd_residual (step × cycle, NaN-padded), fwd_factor, bwd_factor (1-D), fallback
    checkpoint/  the latest checkpoint: the training state's leaves, one dataset each named ``<index> <path>``
                 (``00000 params.classifier.W``, …, ``… opt_state.0.mu.layers.K``, …), attrs step, seed, time_s
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

import lpt

CHUNK_ROWS = 256
INTEGER_COLUMNS = {("history", "step")}
"""Columns stored as int64; every other column is float64 (NaN where a row has no value)."""

DESCRIPTIONS = {
    "history/step": "optimisation steps done (1-based; rows are logged every logging.log_every steps)",
    "history/epoch": "passes over the training samples done (step × batch / training samples)",
    "history/loss": "data loss of the step's batch (softmax cross-entropy or mean squared error)",
    "history/objective": "loss + regularisation (γ_tik, γ_ddt, γ_class terms) of the step's batch",
    "history/train_acc": "accuracy on the step's batch (fraction)",
    "history/train_mse": "mean squared error on the step's batch",
    "history/train_rel_err": "relative error ‖pred − y‖/‖y‖ on the step's batch",
    "history/val_acc": "validation accuracy (fraction); NaN where not evaluated (train.eval_every)",
    "history/val_loss": "validation loss; NaN where not evaluated",
    "history/val_mse": "validation mean squared error; NaN where not evaluated",
    "history/val_rel_err": "validation relative error ‖pred − y‖/‖y‖; NaN where not evaluated",
    "history/grad_norm": "2-norm of the gradient of the objective (all parameters)",
    "history/lr": "step size in effect (after reductions by train.lr_factor; L-BFGS: the line search's step)",
    "history/rejected": "1 where the update was discarded (non-finite values), else 0",
    "history/nonfinite": "1 where the configured solver's step held NaN/inf, else 0",
    "history/time_s": "seconds since the run started (start-up and compilation included; continued on resume)",
    "mgrit/residual": "‖r_k‖₂ after each cycle k (step × cycle, NaN after the last cycle done)",
    "mgrit/rel_residual": "‖r_k‖₂/‖states‖₂ after each cycle (step × cycle)",
    "mgrit/initial": "‖r_0‖₂ of the F-relaxed initial iterate (warm start or coarse guess)",
    "mgrit/cycles": "cycles done (with control=fixed, more than configured where growth cycles ran: the residual "
                    "ended above its start)",
    "mgrit/norm": "‖u_1..u_N‖₂ of the solve's states (identity padding left out)",
    "mgrit/factor": "convergence factor: geometric mean of ‖r_k‖/‖r_{k−1}‖ over cycles k ≥ 2 (NaN with one cycle)",
    "mgrit/factor_last": "the last cycle's ‖r_K‖/‖r_{K−1}‖",
    "mgrit/mode": "inexactness control: 0 fixed or first tolerance; k: tolerance control_tol·10^−k; "
                  "control_tightenings+1: serial",
    "mgrit/grad_cos": "cosine between the one-shot and the exact gradient at the bias checks; NaN elsewhere",
    "mgrit/diverged": "1 where a solve diverged (non-finite, or residual growth from cycle 2 on)",
    "mgrit/fallback": "1 where the step was recomputed serially (solver.on_divergence=serial)",
    "mgrit/coarse_hrho": "H·ρ of each coarse level's steps (step × coarse level) at the evaluations; NaN elsewhere",
}
"""Descriptions of the logged datasets (HDF5 attribute ``description``); ``mgrit/fwd_*`` and ``mgrit/bwd_*``
(forward and adjoint solve) share the entry of ``mgrit/*``."""


def describe(group: str, name: str) -> str:
    """The description of dataset ``group/name`` (empty when there is none)."""
    key = f"{group}/{name}"
    if key not in DESCRIPTIONS and group == "mgrit" and name[:4] in ("fwd_", "bwd_"):
        solve = "forward" if name.startswith("fwd_") else "adjoint"
        base = DESCRIPTIONS.get(f"mgrit/{name[4:]}")
        return f"{solve} solve: {base}" if base else ""
    return DESCRIPTIONS.get(key, "")

log = logging.getLogger("lpt")


def git_revision(start: str | os.PathLike | None = None) -> str:
    """The git revision of the lpt source tree (or of ``start``), with "-dirty" if modified; "unknown" if none."""
    where = Path(start) if start else Path(lpt.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLog:
    """Writer of one run's HDF5 log.

    Rows are appended with :meth:`append`; each call writes, resizes and flushes, so a killed run leaves a
    readable file holding every row logged so far.
    """

    def __init__(self, path: str | os.PathLike, *, config_yaml: str, grid: Sequence[int] = (1, 1),
                 devices: str = "", resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = None
        self._columns: dict[tuple[str, str], list] = {}
        if resume and self.path.exists():
            try:
                self.file = h5py.File(self.path, "a")
                self.file.attrs["resumed"] = int(self.file.attrs.get("resumed", 0)) + 1
            except OSError as exc:  # not a readable HDF5 file: keep it aside, start a new log
                aside = self.path.with_name(f"{self.path.name}.unreadable")
                os.replace(self.path, aside)
                log.warning("run log %s cannot be opened (%s): moved to %s, starting a new log", self.path, exc, aside)
        if self.file is None:
            self._create(config_yaml, grid, devices)
            self.file = h5py.File(self.path, "a")
        self.file.require_group("history")
        self.file.require_group("mgrit")
        self.file.flush()

    def _create(self, config_yaml: str, grid: Sequence[int], devices: str) -> None:
        """Write the new file's attributes under a temporary name and rename it into place (atomic: a kill
        during creation leaves no half-written ``run.h5``)."""
        import jax

        attrs = {"config": config_yaml, "lpt_version": lpt.__version__, "jax_version": jax.__version__,
                 "git_revision": git_revision(), "grid": np.asarray(grid, dtype=np.int64), "devices": devices,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs.update(attrs)
                f.create_group("history")
                f.create_group("mgrit")
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()

    # --- rows ---------------------------------------------------------------------------------------
    def _column(self, group: str, name: str, shape: tuple[int, ...]) -> list:
        """[dataset, rows, row shape, dtype] of column ``group/name``, created with row ``shape`` if new; kept,
        so that a row costs no lookups by name (h5py's are ~0.1 ms each, and a row has some 30 columns)."""
        column = self._columns.get((group, name))
        if column is None:
            g = self.file[group]
            if name not in g:
                dtype = np.int64 if (group, name) in INTEGER_COLUMNS else np.float64
                g.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                 chunks=(CHUNK_ROWS, *shape), fillvalue=0 if dtype == np.int64 else np.nan)
                g[name].attrs["description"] = describe(group, name)
            ds = g[name]
            column = self._columns[(group, name)] = [ds, ds.shape[0], ds.shape[1:], ds.dtype]
        return column

    def _append_row(self, group: str, name: str, value: np.ndarray) -> None:
        """Row ``rows`` of column ``group/name``: the dataset grown by one row and the row written through
        h5py's low-level calls (the same file contents as ``ds.resize(n + 1, axis=0); ds[n] = value``; a row
        of the main job's 31 columns 1.6 ms instead of 11 ms, README "Run log")."""
        column = self._column(group, name, np.shape(value))
        ds, n, shape, dtype = column
        value = np.asarray(value, dtype=dtype)
        if value.shape != shape:
            raise ValueError(f"{group}/{name}: row shape {value.shape} differs from the logged {shape}")
        ds.id.set_extent((n + 1, *shape))
        space = ds.id.get_space()
        space.select_hyperslab((n, *(0 for _ in shape)), (1, *shape))
        ds.id.write(h5py.h5s.create_simple((1, *shape)), space, np.ascontiguousarray(value.reshape(1, *shape)))
        column[1] = n + 1

    def append(self, history: Mapping[str, float], mgrit: Mapping[str, Any] | None = None) -> None:
        """Append one logged step (``history`` scalars, optional ``mgrit`` rows) and flush to disk."""
        for name, value in history.items():
            self._append_row("history", name, np.asarray(value))
        for name, value in (mgrit or {}).items():
            self._append_row("mgrit", name, np.asarray(value))
        self.file.flush()

    def truncate(self, last_step: int) -> None:
        """Drop rows logged after ``last_step`` (used when a run resumes from an earlier checkpoint)."""
        hist = self.file["history"]
        if "step" not in hist:
            return
        keep = int(np.searchsorted(hist["step"][...], last_step, side="right"))
        for group in ("history", "mgrit"):
            for ds in self.file[group].values():
                if ds.shape[0] > keep:
                    ds.resize(keep, axis=0)
        self._columns.clear()  # row counts read from the file again
        self.file.flush()

    # --- checkpoint mirror --------------------------------------------------------------------------
    def write_checkpoint(self, leaves: Sequence[tuple[str, np.ndarray]], meta: Mapping[str, Any]) -> None:
        """Mirror the latest checkpoint in group ``checkpoint/`` (replaced each time): one dataset per named leaf
        (:func:`lpt.logging.checkpoint.named_leaves`), called ``00000 params.layers.K`` etc. (the number keeps
        the order of the training state's leaves)."""
        if "checkpoint" in self.file:
            del self.file["checkpoint"]
        g = self.file.create_group("checkpoint")
        for i, (name, leaf) in enumerate(leaves):
            g.create_dataset(f"{i:05d} {name}", data=np.asarray(leaf))
        for key, value in meta.items():
            g.attrs[key] = value
        self.file.flush()

    def set_attr(self, key: str, value: Any) -> None:
        """Set a root attribute (e.g. the final status) and flush."""
        self.file.attrs[key] = value
        self.file.flush()

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self.file is not None and self.file.id.valid:
            self.file.flush()
            self.file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
