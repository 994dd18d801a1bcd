"""What a user sees while a run goes: a progress bar on terminals; in batch logs (SLURM output files, pipes)
a line when the first step — which includes compilation — is done, a heartbeat line every ``heartbeat_s``
seconds (step, loss, time per step, ETA), and a summary line when the run ends. While the first step compiles
(minutes for deep conv presets), a line every ``heartbeat_s`` seconds says so, on terminals and in batch logs
alike (a daemon thread; XLA compiles without holding Python's lock)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Mapping

import jax
import numpy as np

log = logging.getLogger("lpt")

HEARTBEAT_S = 30.0
"""Seconds between heartbeat lines in batch logs."""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunProgress:
    """Progress of one run's steps ``start`` … ``total``.

    Args:
        total: the last step (``train.steps``); start: the step the run starts from (> 0 when resumed).
        bar: show a tqdm bar on interactive terminals (``logging.progress``); never in batch logs.
        heartbeat_s: seconds between heartbeat lines when no bar is shown.
    """

    def __init__(self, total: int, start: int, bar: bool = True, heartbeat_s: float = HEARTBEAT_S):
        from tqdm.auto import tqdm

        self.total, self.start, self.heartbeat_s = total, start, heartbeat_s
        self.bar = tqdm(total=total, initial=start, disable=None if bar else True, unit="step", dynamic_ncols=True,
                        leave=False)
        self.t0 = time.perf_counter()
        self.first_s: float | None = None
        self.last_beat = self.t0
        self.rejected = 0  # set by the loop from its fault guard
        self.fallbacks = 0
        self.logged = 0
        self.factors: dict[str, list[float]] = {"fwd": [], "bwd": []}
        self.cycles: dict[str, list[float]] = {"fwd": [], "bwd": []}
        log.info("compiling the training step (the first step includes compilation) ...")
        self._first_done = threading.Event()
        self._beat = threading.Thread(target=self._compile_heartbeat, name="lpt-compile-heartbeat", daemon=True)
        self._beat.start()

    def _compile_heartbeat(self) -> None:
        """A line every ``heartbeat_s`` seconds until the first step is done (or the run ends)."""
        start = time.monotonic()
        while not self._first_done.wait(self.heartbeat_s):
            log.info("still compiling the training step (%s so far) ...", _duration(time.monotonic() - start))

    def step(self, done: int, metrics: Mapping[str, Any]) -> None:
        """After step ``done`` was dispatched (only the first step is waited for, to time it)."""
        if self.first_s is None:
            jax.block_until_ready(metrics["loss"])
        now = time.perf_counter()
        if self.first_s is None:
            self._first_done.set()
            self.first_s = now - self.t0
            log.info("first step done in %.1f s (compilation included)", self.first_s)
            self.last_beat = now
        elif self.bar.disable and now - self.last_beat >= self.heartbeat_s:
            per_step = self._per_step(done, now)
            loss = float(jax.device_get(metrics["loss"]))
            log.info("step %d/%d  loss %.4g  %.3g s/step  ETA %s", done, self.total, loss, per_step,
                     _duration(per_step * (self.total - done)))
            self.last_beat = now
        self.bar.update(1)

    def logged_row(self, row: Mapping[str, float], stats: Mapping[str, Any]) -> None:
        """A logged row: the bar's loss, and the solver statistics the summary reports."""
        self.bar.set_postfix(loss=f"{row['loss']:.3g}", refresh=False)
        self.logged += 1
        self.fallbacks += int(np.asarray(stats.get("fallback", False)))
        for key in self.factors:
            value = float(np.asarray(stats.get(f"{key}_factor", math.nan)))
            if math.isfinite(value):
                self.factors[key].append(value)
            if f"{key}_cycles" in stats:
                self.cycles[key].append(float(np.asarray(stats[f"{key}_cycles"])))

    def _per_step(self, done: int, now: float) -> float:
        """Seconds per step after the first (compiling) one."""
        after_first = done - self.start - 1
        return (now - self.t0 - (self.first_s or 0.0)) / after_first if after_first > 0 else math.nan

    def summary(self, done: int, final: Mapping[str, float], log_path) -> str:
        """The end-of-run line (logged as a warning when steps were rejected or fell back to serial)."""
        now = time.perf_counter()
        parts = [f"finished steps {self.start + 1}-{done} in {_duration(now - self.t0)} (first step "
                 f"{self.first_s or 0.0:.1f} s with compilation, then {self._per_step(done, now):.3g} s/step)"]
        parts += [f"{k} {v:.4g}" for k, v in final.items() if k.startswith("val_") and math.isfinite(v)]
        parts.append(f"rejected steps {self.rejected}")
        if any(self.factors.values()) or self.fallbacks:
            fwd, bwd = (f"{np.mean(v):.3g}" if v else "n/a" for v in self.factors.values())
            parts.append(f"serial fallbacks {self.fallbacks} of {self.logged} logged steps")
            parts.append(f"mean MGRIT factors fwd {fwd} / adj {bwd}")
            if all(self.cycles.values()):  # above the configured counts where growth cycles or the adaptive control ran
                fwd, bwd = (f"{np.mean(v):.3g}" for v in self.cycles.values())
                parts.append(f"mean cycles fwd {fwd} / adj {bwd}")
        parts.append(f"log {log_path}")
        line = "; ".join(parts)
        (log.warning if self.rejected or self.fallbacks else log.info)("%s", line)
        return line

    def close(self) -> None:
        self._first_done.set()
        self.bar.close()
