"""What an MGRIT run reports about its layer hierarchy: the padding of the depth to whole intervals (logged when
the run starts) and the coarse-step stability estimate H·ρ (checked when the run starts and at every evaluation)."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from lpt.mgrit.layout import make_layout

log = logging.getLogger("lpt")


PADDING_WARN = 0.05
"""Padding (identity steps the MGRIT layout adds, relative to the depth) above which the run warns."""


def report_padding(solver, depth: int, runlog) -> None:
    """The real and the padded depth of an MGRIT run: logged (a warning above :data:`PADDING_WARN` more work,
    with the nearest depths that need no padding) and kept as the log's attributes ``depth``, ``padded_depth``
    (the steps of the MGRIT part and the serial tail) and ``serial_tail`` (layers after the MGRIT part,
    :func:`lpt.mgrit.layout.serial_tail`)."""
    if not hasattr(solver, "layouts"):
        runlog.set_attr("depth", depth)
        runlog.set_attr("padded_depth", depth)
        runlog.set_attr("serial_tail", 0)
        return
    fwd = solver.layouts(depth)[0]
    runlog.set_attr("depth", depth)
    runlog.set_attr("padded_depth", fwd.n_pad + fwd.tail)
    runlog.set_attr("serial_tail", fwd.tail)
    if fwd.tail:
        line = (f"MGRIT solves the first {fwd.n} of {depth} layers and the last {fwd.tail} serially after them "
                f"(about {3 * fwd.tail} layer steps per gradient, not per cycle), so that every level of the "
                f"hierarchy holds whole intervals without identity steps")
    else:
        line = (f"MGRIT pads depth {depth} to {fwd.n_pad} layer steps ({fwd.n_pad - depth} identity steps; "
                f"{100 * fwd.extra_work:.2g} % more work per cycle with the coarse levels' own padding), so that "
                f"every level of the hierarchy holds whole intervals")
    if fwd.chunks > 1:
        line += (f"; {fwd.chunks} layer chunks of {fwd.stride} layers (the last {fwd.last_rows}), "
                 f"{fwd.n_local} steps each with identity steps: the largest chunk relaxes {fwd.work} steps per "
                 f"sweep of all levels, {100 * fwd.extra_work_per_chunk:.2g} % more than the real steps split "
                 f"evenly")
    if fwd.extra_work_per_chunk <= PADDING_WARN:
        log.info("%s", line)
        return
    below = next((d for d in range(depth - 1, 0, -1) if _unpadded(solver, d)), None)
    above = next((d for d in range(depth + 1, 2 * fwd.n_pad + 2) if _unpadded(solver, d)), None)
    near = " or ".join(str(d) for d in (below, above) if d)
    grid = f" on {fwd.chunks} layer chunks" if fwd.chunks > 1 else ""
    log.warning("%s%s", line, f"; depth {near} needs none{grid}" if near else "")


def _unpadded(solver, depth: int) -> bool:
    """Whether a depth-``depth`` net needs no identity step and splits evenly over the solver's layer chunks (which
    needs no padding on one chunk: checked first, it is cheaper)."""
    try:
        fwd = getattr(solver, "fwd", None)
        return ((fwd is None or make_layout(depth, fwd).extra_work == 0)
                and solver.layouts(depth)[0].extra_work_per_chunk == 0)
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
