"""PNG figures of runs: loss and accuracy (or MSE) curves, MGRIT residual histories per cycle, and measured
against predicted scaling. Matplotlib with the non-interactive Agg back-end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Sequence[Any], key: str, path: str | os.PathLike, *, ylabel: str, logy: bool = False,
                title: str = "") -> Path | None:
    """One line per run of ``history/<key>`` against the step (NaN rows skipped); None if no run has it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for run in runs:
        h = run.history
        if key not in h or "step" not in h:
            continue
        ok = np.isfinite(h[key])
        if not ok.any():
            continue
        ax.plot(h["step"][ok], h[key][ok], label=run.label, marker="." if ok.sum() < 30 else None)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimisation step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_residuals(runs: Sequence[Any], path: str | os.PathLike, max_lines: int = 8) -> Path | None:
    """MGRIT residual histories: ‖r‖ after each cycle (forward solid, adjoint dashed) for up to ``max_lines``
    logged steps per run, spread over the run; None if no run has MGRIT statistics."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=False)
    drawn = False
    for run in runs:
        for ax, name in zip(axes, ("fwd_residual", "bwd_residual")):
            res = run.mgrit.get(name)
            if res is None or res.ndim != 2 or not np.isfinite(res).any():
                continue
            rows = np.unique(np.linspace(0, res.shape[0] - 1, min(max_lines, res.shape[0])).astype(int))
            steps = run.history.get("step", np.arange(1, res.shape[0] + 1))
            for i in rows:
                r = res[i]
                ok = np.isfinite(r) & (r > 0)
                if ok.any():
                    ax.semilogy(np.arange(1, r.size + 1)[ok], r[ok], marker="o",
                                label=f"{run.label} step {int(steps[i])}")
                    drawn = True
    if not drawn:
        plt.close(fig)
        return None
    from matplotlib.ticker import MaxNLocator

    for ax, title in zip(axes, ("forward MGRIT", "adjoint MGRIT")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("cycle")
        ax.set_ylabel("residual ‖r‖₂")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_scaling(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Measured and predicted time per step against the number of ranks (log-log); rows hold ``ranks``,
    ``measured_s`` and ``predicted_s`` (and optionally ``serial_s``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    p = np.asarray([r["ranks"] for r in rows], float)
    for key, style, label in (("measured_s", "o-", "measured"), ("predicted_s", "s--", "predicted"),
                              ("serial_s", "k:", "serial (predicted)")):
        vals = np.asarray([r.get(key, np.nan) for r in rows], float)
        if np.isfinite(vals).any():
            ax.plot(p, vals, style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("layer ranks P")
    ax.set_ylabel("time [s]")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
