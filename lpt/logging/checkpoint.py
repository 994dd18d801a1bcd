"""Atomic checkpoints of the training state (parameters, optimiser and solver state, step, seed)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

CHECKPOINT_NAME = "checkpoint.npz"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync it, and rename it over ``path``.

    A reader sees either the old file or the new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def leaf_names(state: Any) -> list[str]:
    """The paths of the leaves of the pytree ``state``, e.g. ``"params.layers.K"``, ``"opt_state.0.mu.layers.K"``,
    in the order :func:`jax.tree_util.tree_leaves` gives them (no leaf is read)."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in flat]


def named_leaves(state: Any) -> list[tuple[str, np.ndarray]]:
    """The leaves of the pytree ``state`` as numpy arrays with their paths (:func:`leaf_names`)."""
    return list(zip(leaf_names(state), (np.asarray(x) for x in jax.tree_util.tree_leaves(state))))


def save_checkpoint(path: str | os.PathLike, state: Any, meta: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Save the pytree ``state`` (its leaves, ``leaf_00000``…, and their paths, ``names``) and scalar ``meta``
    atomically as ``.npz``; return the named leaves (:func:`named_leaves`)."""
    leaves = named_leaves(state)
    buf = io.BytesIO()
    np.savez(buf, **{f"leaf_{i:05d}": leaf for i, (_, leaf) in enumerate(leaves)},
             names=np.array([name for name, _ in leaves], dtype=str),
             **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    atomic_write_bytes(path, buf.getvalue())
    return leaves


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file for ``resume=PATH``: the file itself or ``checkpoint.npz`` in a run directory."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(
            f"resume={path}: no checkpoint found at {p}; pass a run directory that holds {CHECKPOINT_NAME} "
            f"or the checkpoint file itself"
        )
    return p


def resolve_resume(resume: str | os.PathLike | None, run_dir: str | os.PathLike,
                   environ: Mapping[str, str] = os.environ) -> Path | None:
    """The checkpoint a run continues from, or None for a fresh start.

    ``resume=PATH``: that run directory's (or file's) checkpoint, which must exist. ``resume=auto``: the
    checkpoint in the run's own directory ``run_dir`` if there is one. A SLURM job that was requeued
    (``SLURM_RESTART_COUNT`` > 0) resumes as with ``auto`` without being told, provided its run directory is
    the same in every attempt (e.g. ``hydra.run.dir=runs/slurm/$SLURM_JOB_ID``, as scripts/slurm/array_job.sh
    sets for array tasks).
    """
    if resume is not None and str(resume) != "auto":
        return find_checkpoint(resume)
    requeued = environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")
    if resume is None and not requeued:
        return None
    own = Path(run_dir) / CHECKPOINT_NAME
    return own if own.is_file() else None


def load_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``template``; shapes and dtypes must match."""
    p = find_checkpoint(path)
    with np.load(p) as data:
        leaves = [data[k] for k in sorted(k for k in data.files if k.startswith("leaf_"))]
        meta = {k[5:]: data[k][()] for k in data.files if k.startswith("meta_")}
    ref_leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(leaves) != len(ref_leaves):
        raise ValueError(f"checkpoint {p} holds {len(leaves)} arrays but this configuration needs "
                         f"{len(ref_leaves)}: was it written by a run with another model/optimizer/solver?")
    names = leaf_names(template)
    for i, (a, b) in enumerate(zip(leaves, ref_leaves)):
        dtype = np.dtype(b.dtype) if hasattr(b, "dtype") else np.asarray(b).dtype  # not read: it may be sharded
        if a.shape != np.shape(b) or a.dtype != dtype:
            raise ValueError(f"checkpoint {p}: array {i} ({names[i]}) has shape {a.shape} {a.dtype}, this "
                             f"configuration needs {np.shape(b)} {dtype}: resume with the "
                             f"configuration of the original run")
    return jax.tree_util.tree_unflatten(treedef, leaves), meta
