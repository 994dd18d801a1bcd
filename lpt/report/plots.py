"""PNG figures of runs: loss and accuracy (or MSE) curves, MGRIT residual histories per cycle, MGRIT residuals and
convergence factors per training step, and measured against predicted scaling. Matplotlib with the
non-interactive Agg back-end.

The MGRIT figures are built by :func:`residuals_figure` and :func:`convergence_figure` (matplotlib Figures, for
inspection) and written by :func:`plot_residuals` and :func:`plot_convergence`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lpt.report.summary import last_finite

SOLVES = (("fwd", "forward"), ("bwd", "adjoint"))
"""The two MGRIT solves of a training step: prefix of the ``mgrit/`` datasets and name."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike | None) -> Path | None:
    """Write ``fig`` to ``path`` (PNG, 100 dpi) and close it; None (nothing written) if ``fig`` is None."""
    if fig is None:
        return None
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return Path(path)


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
    return _save(fig, path)


def _steps(run: Any, rows: int) -> np.ndarray:
    """The training steps of the first ``rows`` logged rows (1, 2, … if the log has no step column)."""
    return np.asarray(run.history.get("step", np.arange(1, rows + 1)))[:rows]


def _per_cycle(run: Any, prefix: str) -> np.ndarray | None:
    """``mgrit/<prefix>_residual`` (step × cycle) if some logged step has ≥ 2 finite cycles, else None."""
    res = run.mgrit.get(f"{prefix}_residual")
    if res is None or res.ndim != 2 or not ((np.isfinite(res) & (res > 0)).sum(axis=1) >= 2).any():
        return None
    return res


def _has_mgrit(run: Any) -> bool:
    """Whether the run logged MGRIT residuals (a layer-parallel run)."""
    return any(np.isfinite(run.mgrit.get(f"{p}_residual", np.nan)).any() for p, _ in SOLVES)


def residuals_figure(runs: Sequence[Any], max_lines: int = 24, title: str = ""):
    """Residual ‖r_k‖ against cycle k of up to ``max_lines`` logged steps per run and solve (spread over the run),
    one row of panels per run with MGRIT statistics, one column per solve (forward, adjoint) that has ≥ 2 cycles
    in some step of some run; colour = training step (colour bar). A run's solve with at most one cycle per
    step gets a note instead (see :func:`convergence_figure`). None if no panel has ≥ 2 cycles to draw."""
    rows = [run for run in runs if _has_mgrit(run)]
    cols = [(p, name) for p, name in SOLVES if any(_per_cycle(run, p) is not None for run in rows)]
    if not cols:
        return None
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    steps = np.concatenate([_steps(run, len(run.mgrit[f"{p}_residual"])) for run in rows for p, _ in SOLVES
                            if f"{p}_residual" in run.mgrit])
    colours = ScalarMappable(Normalize(steps.min(), max(steps.max(), steps.min() + 1)), "viridis")
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.5 * len(cols) + 1.2, 2.8 * len(rows) + 0.6),
                             squeeze=False, layout="constrained")
    for run, row in zip(rows, axes):
        for (prefix, name), ax in zip(cols, row):
            ax.set_title(f"{run.label}: {name} solve", fontsize=9)
            res = _per_cycle(run, prefix)
            if res is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{name}: at most one cycle per step,\nresidual per step in convergence.png",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            step = _steps(run, len(res))
            for i in np.unique(np.linspace(0, len(res) - 1, min(max_lines, len(res))).astype(int)):
                ok = np.isfinite(res[i]) & (res[i] > 0)
                if ok.sum() >= 2:
                    ax.semilogy(np.arange(1, res.shape[1] + 1)[ok], res[i][ok], marker=".", lw=1,
                                color=colours.to_rgba(step[i]))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("cycle k")
            ax.set_ylabel("residual ‖r_k‖₂")
            ax.grid(True, alpha=0.3)
    fig.colorbar(colours, ax=axes, label="training step")
    if title:
        fig.suptitle(title)
    return fig


def plot_residuals(runs: Sequence[Any], path: str | os.PathLike, max_lines: int = 24,
                   title: str = "") -> Path | None:
    """Write :func:`residuals_figure` to ``path``; None (nothing written) if it has nothing to draw, e.g. no run
    has MGRIT statistics."""
    return _save(residuals_figure(runs, max_lines, title), path)


def _last_per_step(res: np.ndarray | None) -> np.ndarray | None:
    """The last finite entry of each row of a step × cycle array (NaN where none); None if not 2-D."""
    if res is None or res.ndim != 2:
        return None
    return np.array([last_finite(r) for r in res])


def convergence_figure(runs: Sequence[Any], title: str = ""):
    """Against the training step, one colour per run with MGRIT statistics: the residual after the last cycle of
    each solve (``mgrit/<solve>_rel_residual``, relative to the state norm, where the run logs it, else the
    absolute ``<solve>_residual``; forward solid, adjoint dashed) and the per-step convergence factors
    ``mgrit/<solve>_factor``. Legend (run labels, line styles) below the panels. None if no run has MGRIT
    statistics."""
    rows = [run for run in runs if _has_mgrit(run)]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, (ax_res, ax_fac) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, layout="constrained")
    styles = dict(zip((p for p, _ in SOLVES), ("-", "--")))
    absolute = [not any(f"{p}_rel_residual" in run.mgrit for p, _ in SOLVES) for run in rows]
    for i, (run, absl) in enumerate(zip(rows, absolute)):
        for prefix, _ in SOLVES:
            final = _last_per_step(run.mgrit.get(f"{prefix}_{'' if absl else 'rel_'}residual"))
            for ax, values in ((ax_res, final), (ax_fac, run.mgrit.get(f"{prefix}_factor"))):
                if values is None:
                    continue
                ok = np.isfinite(values) & (values > 0)  # log axes
                if ok.any():
                    ax.plot(_steps(run, len(values))[ok], values[ok], styles[prefix], color=f"C{i % 10}",
                            lw=1, marker="." if ok.sum() < 30 else None)
    mixed = any(absolute) and not all(absolute)
    ax_res.set_ylabel("last residual ‖r‖₂ (absolute)" if all(absolute) else
                      "last residual ‖r‖/‖u‖ (relative)" + ("\nor ‖r‖₂ (runs marked absolute)" if mixed else ""))
    ax_res.set_title("residual after the last cycle of each solve", fontsize=10)
    ax_fac.set_ylabel("convergence factor")
    ax_fac.set_title("convergence factor per step (geometric mean of ‖r_k‖/‖r_k−1‖, k ≥ 2)", fontsize=10)
    if not ax_fac.lines:
        ax_fac.text(0.5, 0.5, "no convergence factors: at most one cycle per solve", ha="center", va="center",
                    transform=ax_fac.transAxes, fontsize=9)
    ax_fac.set_xlabel("training step")
    for ax in (ax_res, ax_fac):
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=f"C{i % 10}", label=run.label + (" (absolute)" if mixed and absl else ""))
               for i, (run, absl) in enumerate(zip(rows, absolute))]
    handles += [Line2D([], [], color="k", ls=styles[p], label=name) for p, name in SOLVES]
    widest = max(len(h.get_label()) for h in handles)
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=max(1, min(len(handles), 90 // widest)))
    if title:
        fig.suptitle(title)
    return fig


def plot_convergence(runs: Sequence[Any], path: str | os.PathLike, title: str = "") -> Path | None:
    """Write :func:`convergence_figure` to ``path``; None (nothing written) if no run has MGRIT statistics."""
    return _save(convergence_figure(runs, title), path)


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
    return _save(fig, path)
