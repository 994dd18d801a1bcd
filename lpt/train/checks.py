"""What an MGRIT run reports about its layer hierarchy: the padding of the depth to whole intervals (logged when
the run starts) and the coarse-step stability estimate H·ρ (checked when the run starts and at every evaluation)."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

log = logging.getLogger("lpt")


PADDING_WARN = 0.05
"""Padding (identity steps the MGRIT layout adds, relative to the depth) above which the run warns."""


def report_padding(solver, depth: int, runlog) -> None:
    """The real and the padded depth of an MGRIT run: logged (a warning above :data:`PADDING_WARN` more work,
    with the nearest depths that need no padding) and kept as the log's attributes ``depth`` and
    ``padded_depth``."""
    if not hasattr(solver, "layouts"):
        runlog.set_attr("depth", depth)
        runlog.set_attr("padded_depth", depth)
        return
    fwd = solver.layouts(depth)[0]
    runlog.set_attr("depth", depth)
    runlog.set_attr("padded_depth", fwd.n_pad)
    extra = fwd.extra_work
    line = (f"MGRIT pads depth {depth} to {fwd.n_pad} layer steps ({fwd.n_pad - depth} identity steps; "
            f"{100 * extra:.2g} % more work per cycle with the coarse levels' own padding), so that every level of "
            f"the hierarchy holds whole intervals")
    if fwd.chunks > 1:
        line += (f"; {fwd.chunks} layer chunks of {fwd.stride} layers (the last {fwd.last_real}), "
                 f"{fwd.n_local} steps each with identity steps")
    if extra <= PADDING_WARN:
        log.info("%s", line)
        return
    below = next((d for d in range(depth - 1, 0, -1) if _unpadded(solver, d)), None)
    above = next(d for d in range(depth + 1, 2 * fwd.n_pad + 2) if _unpadded(solver, d))
    log.warning("%s; depth %s needs none", line, " or ".join(str(d) for d in (below, above) if d))


def _unpadded(solver, depth: int) -> bool:
    try:
        return solver.layouts(depth)[0].extra_work == 0
    except ValueError:  # too shallow for the layer ranks
        return False


class StabilityCheck:
    """The coarse-step stability estimate H·ρ of the MGRIT levels (:mod:`lpt.mgrit.stability`): checked when the
    run starts and at every evaluation, logged as ``mgrit/coarse_hrho`` (step × coarse level, NaN where not
    evaluated); the first level that :func:`lpt.mgrit.stability.stability_message` finds unstable is warned
    about once per run, by the rank that writes the log only. Nothing for other solvers."""

    def __init__(self, solver, model, x: jnp.ndarray, warn: bool = True) -> None:
        self.estimate = getattr(solver, "coarse_stability", None)
        self.model, self.x, self.warned = model, x, not warn
        self.blank = np.zeros(0)

    def check(self, params) -> np.ndarray:
        values, message = self.estimate(self.model, params, self.x)
        if np.size(values) == 0:  # one level only (e.g. min_coarse ≥ N): no coarse steps, nothing to log
            self.estimate = None
        if message is not None and not self.warned:
            log.warning("%s", message)
            self.warned = True
        self.blank = np.full(np.shape(values), np.nan)
        return np.asarray(values, np.float64)

    def start(self, params) -> None:
        """The check when the run starts (a warning only; the log's rows come with the evaluations)."""
        if self.estimate is not None:
            self.check(params)

    def row(self, params) -> dict[str, np.ndarray]:
        """``{"coarse_hrho": …}`` for a logged row: the estimate at ``params``, or NaN (``params`` None)."""
        if self.estimate is None:
            return {}
        values = self.blank if params is None else self.check(params)
        return {} if self.estimate is None else {"coarse_hrho": values}
