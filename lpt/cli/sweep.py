"""Summary of a Hydra multirun (``lpt-train -m …``): a callback that compares the jobs of a sweep once they are done.

:class:`SweepSummary` is registered in ``configs/train.yaml`` under ``hydra.callbacks.sweep_summary``. Hydra calls
its :meth:`~SweepSummary.on_multirun_end` in the launching process after every job of the sweep has returned, with
any launcher (the basic one, joblib, submitit / SLURM: the jobs' directories are on the file system the launching
process sees); single runs never call it. It finds the jobs under the sweep directory (``hydra.sweep.dir``; a job is
a directory holding ``run.h5`` or Hydra's ``.hydra/overrides.yaml``) and writes the report of ``lpt-report``
(:func:`lpt.cli.report.report`: ``summary.md``, ``summary.csv``, ``loss.png``, ``accuracy.png`` or ``mse.png``,
``residuals.png``) into ``<sweep dir>/report/`` (``hydra.callbacks.sweep_summary.out``: another folder, relative to
the sweep directory or absolute). Each run is labelled by the overrides of its job that are not shared by all jobs
(``solver=mgrit``); the shared ones are the report's title. Jobs without a readable run log (failed, or killed
before they wrote one, where the launcher carries on) are skipped and counted. It prints one line saying where the
summary is; any error is printed as one warning line and never fails the sweep. Where a failed job ends the sweep
(Hydra's basic launcher and submitit re-raise a job's error, e.g. ``lpt-train``'s exit status 2 or 3), Hydra does
not call the callback: ``lpt-report <sweep dir>/*/run.h5`` summarises the jobs that finished.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

LOG_NAME = "run.h5"
"""The run log each job writes into its directory (:func:`lpt.train.run`)."""


def _natural_key(path: Path) -> list[Any]:
    """Job directories in job order: ``2`` before ``10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def find_jobs(sweep_dir: Path, output_subdir: str | None = ".hydra", exclude: Path | None = None) -> list[Path]:
    """The job directories under ``sweep_dir``: those holding a run log or Hydra's ``overrides.yaml``, in job
    order (anything under ``exclude``, the report folder, left out)."""
    dirs = {p.parent for p in sweep_dir.rglob(LOG_NAME)}
    if output_subdir:
        dirs |= {p.parent.parent for p in sweep_dir.rglob(f"{output_subdir}/overrides.yaml")}
    if exclude is not None:
        dirs = {d for d in dirs if not d.resolve().is_relative_to(exclude.resolve())}
    return sorted(dirs, key=lambda d: _natural_key(d.relative_to(sweep_dir)))


def job_overrides(job_dir: Path, output_subdir: str | None = ".hydra") -> list[str]:
    """The command-line overrides of one job (``["solver=mgrit", "train.steps=3"]``); empty when unknown."""
    path = job_dir / output_subdir / "overrides.yaml" if output_subdir else None
    if path is None or not path.is_file():
        return []
    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def sweep_labels(overrides: list[list[str]], names: list[str]) -> tuple[list[str], str]:
    """Labels of the jobs — the overrides not shared by all of them, joined with spaces — and the shared ones (the
    title). A job whose label would be empty or repeat another's is named by ``names`` (its directory) as well."""
    shared = [o for o in overrides[0] if all(o in other for other in overrides[1:])] if overrides else []
    labels = [" ".join(o for o in own if o not in shared) for own in overrides]
    labels = [label or name for label, name in zip(labels, names)]
    if len(set(labels)) < len(labels):
        labels = [label if label == name else f"{name}: {label}" for label, name in zip(labels, names)]
    return labels, " ".join(shared)


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, the report of all its jobs in ``<sweep dir>/<out>``."""

    def __init__(self, out: str = "report") -> None:
        self.out = out

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.summarize(Path(str(config.hydra.sweep.dir)), config.hydra.get("output_subdir", ".hydra"))
        except Exception as exc:  # noqa: BLE001 - a finished sweep never fails because of its summary
            print(f"lpt-train: warning: no sweep summary: {type(exc).__name__}: {exc}", file=sys.stderr)

    def summarize(self, sweep_dir: Path, output_subdir: str | None = ".hydra") -> dict[str, Path] | None:
        """Write the report of the jobs under ``sweep_dir``; returns the written files (None: no job had a
        readable run log, one warning line printed)."""
        from lpt.cli.report import report
        from lpt.report import summarize

        out = sweep_dir / self.out
        jobs = find_jobs(sweep_dir, output_subdir, exclude=out)
        runs, skipped = [], []
        for job in jobs:
            try:
                summarize(job / LOG_NAME)  # readable: report() reads it again
                runs.append(job)
            except Exception:  # noqa: BLE001 - no log, or one cut off: the job failed or was killed
                skipped.append(job)
        names = [str(job.relative_to(sweep_dir)) for job in runs]
        skip_note = ""
        if skipped:
            skip_note = (f"; skipped {len(skipped)} job{'s' * (len(skipped) > 1)} without a readable run log: "
                         + ", ".join(str(job.relative_to(sweep_dir)) for job in skipped))
        if not runs:
            print(f"lpt-train: warning: no sweep summary: no readable run log under {sweep_dir}{skip_note}",
                  file=sys.stderr)
            return None
        labels, title = sweep_labels([job_overrides(job, output_subdir) for job in runs], names)
        files = report([str(job) for job in runs], out, labels=labels, title=title)
        print(f"lpt-train: sweep summary of {len(runs)} run{'s' * (len(runs) > 1)} in {out} "
              f"({', '.join(files)}){skip_note}")
        return files
