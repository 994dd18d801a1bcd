"""Counting the work of MGRIT: layer steps, sequential operations and messages (DESIGN §7).

Two kinds of counts:

* the textbook estimate of Falgout et al. (2014) used in DESIGN §7: one V-cycle with F-relaxation on every
  level costs ≈ N(2m−1)/(m−1) layer steps (F-relaxation n(m−1)/m, residual n/m and the final F-relaxation
  n(m−1)/m on each level of n = N/m^ℓ steps, summed over ℓ), ≈ N(3m−1)/(m−1) for FCF, in general
  N((2+ν)m−1)/(m−1) with ν CF-sweeps (:func:`textbook_work_per_cycle`);
* the operations this implementation performs on one layer rank (:func:`solve_ops`, :func:`gradient_ops`),
  mirrored from :mod:`lpt.mgrit` on the padded level sizes of :func:`lpt.mgrit.layout.make_layout` (and checked
  against the solver itself: :mod:`lpt.perfmodel.trace` counts the same quantities in the traced code). Each
  relaxation sweep of a level with n_c intervals is a scan of m steps, each step vmapped over the rank's
  n_c/P intervals (the largest chunk's, dead steps included); the coarsest level is a serial sweep; the
  levels below the layout's chunked ones are gathered and solved redundantly. A cycle that receives the C-point
  predictions of the previous one skips its first F-relaxation, so level 0 costs (ν₀+1) sweeps, a coarse level ℓ one FAS
  right-hand side (one vectorised step over its n_ℓ steps) and ν_ℓ+2 sweeps, the coarsest level n_L serial
  steps: the critical path of a cycle is Σ_ℓ<L (sweeps_ℓ·m_ℓ + [ℓ>0]) + 1 + n_L sequential steps.

Counts are static Python numbers (no jax), so they can be tested exactly and evaluated for any machine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from lpt.mgrit.layout import Layout, make_layout, paired_layouts, serial_tail
from lpt.mgrit.options import MGRITOptions

Curve = Literal["step", "adjoint", "linearize", "theta"]
Message = Literal["shift", "allgather", "allreduce"]


def textbook_work_per_cycle(depth: int, cfactor: int, nrelax: int = 0) -> float:
    """Layer steps of one V-cycle over infinitely many levels: N((2+ν)m − 1)/(m − 1) (DESIGN §7).

    ν = 0 (F-relaxation) gives N(2m−1)/(m−1); ν = 1 (FCF) N(3m−1)/(m−1).
    """
    m = cfactor
    return depth * ((2 + nrelax) * m - 1) / (m - 1)


def textbook_level_work(n: float, cfactor: int, nrelax: int = 0) -> float:
    """Layer steps one V-cycle spends on a level of n steps: F-relax n(m−1)/m, ν CF-sweeps n each, the
    residual n/m and the final F-relaxation n(m−1)/m, i.e. n((2+ν)m − 1)/m."""
    m = cfactor
    return n * ((2 + nrelax) * m - 1) / m


@dataclass
class Ops:
    """Sequential operations of one rank.

    Attributes:
        evals: Counter of (curve, intervals) → number of sequential evaluations of ``curve`` vmapped over
            ``intervals`` intervals (stacked batch = intervals × batch).
        sweeps: number of scans launched (relaxation and serial sweeps).
        messages: Counter of (kind, states) → count; ``states`` is the message size in states per sample
            (for allgather: per rank), parameters counted as ``("params", layers)`` entries in ``param_msgs``.
        param_msgs: Counter of (kind, layers) → count of messages carrying ``layers`` layers' parameters.
        copies: states per sample copied by the bookkeeping (splitting, joining, concatenating levels).
    """

    evals: Counter = field(default_factory=Counter)
    sweeps: int = 0
    messages: Counter = field(default_factory=Counter)
    param_msgs: Counter = field(default_factory=Counter)
    copies: float = 0.0

    def add(self, other: "Ops", times: int = 1) -> "Ops":
        for _ in range(times):
            self.evals.update(other.evals)
            self.messages.update(other.messages)
            self.param_msgs.update(other.param_msgs)
            self.sweeps += other.sweeps
            self.copies += other.copies
        return self

    def eval(self, curve: Curve, intervals: int, count: int = 1) -> None:
        self.evals[(curve, int(intervals))] += count

    def message(self, kind: Message, states: float, count: int = 1) -> None:
        self.messages[(kind, states)] += count

    @property
    def work(self) -> float:
        """Layer steps (forward or adjoint; one vmapped evaluation over n intervals counts n)."""
        return float(sum(n * c for (curve, n), c in self.evals.items() if curve in ("step", "adjoint")))

    @property
    def critical_path(self) -> int:
        """Sequential forward/adjoint step evaluations (each vmapped evaluation counts once)."""
        return int(sum(c for (curve, _), c in self.evals.items() if curve in ("step", "adjoint")))


# --- levels ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelPlan:
    """One level as one rank sees it: global steps ``n`` (with the level's identity padding), coarsening factor ``m``
    (0: coarsest), the rank's
    number of steps ``n_local`` (= n when gathered), whether it is ``distributed`` over the ranks, and its
    global index ``index`` (for the per-level nrelax)."""

    n: int
    m: int
    n_local: int
    distributed: bool
    index: int

    @property
    def intervals(self) -> int:
        """Intervals this rank relaxes at once (n_local/m)."""
        return self.n_local // self.m if self.m else 0


def plan_levels(layout: Layout) -> tuple[LevelPlan, ...]:
    """The levels of a layout from one rank's point of view (distributed levels first, then gathered ones)."""
    plans, local = [], layout.local_shapes
    for i, shape in enumerate(layout.shapes):
        dist = i < layout.dist and layout.chunks > 1
        n = shape.padded  # a level's own identity padding is relaxed with it, a chunk's dead steps too
        plans.append(LevelPlan(n, shape.m, local[i].n if i < layout.dist else n, dist, i))
    return tuple(plans)


def layout_for(depth: int, options: MGRITOptions, layers: int = 1, multiple: int = 1) -> Layout:
    """The training solver's layout (padded level sizes and chunking) of a depth-N network on ``layers`` ranks:
    of its MGRIT part, N less the serial tail (:func:`lpt.mgrit.layout.serial_tail`), which it records."""
    tail = serial_tail(depth, options)
    return make_layout(depth - tail, options, layers, multiple)._replace(tail=tail)


# --- one solve ---------------------------------------------------------------------------------------
def _sweep(ops: Ops, lvl: LevelPlan, curve: Curve, halo: bool) -> None:
    """One relaxation sweep: m steps over the rank's intervals; ``halo``: a C-relaxation's neighbour message."""
    ops.eval(curve, lvl.intervals, lvl.m)
    ops.sweeps += 1
    if halo and lvl.distributed:
        ops.message("shift", 1)
        ops.copies += lvl.intervals + 1


def _cycle(ops: Ops, levels: tuple[LevelPlan, ...], i: int, options: MGRITOptions, curve: Curve,
           have_chat: bool, kind: str) -> None:
    lvl = levels[i]
    if not have_chat:
        _sweep(ops, lvl, curve, halo=False)
    for _ in range(options.nrelax_at(lvl.index)):
        _sweep(ops, lvl, curve, halo=True)
    _coarse_solve(ops, levels, i + 1, options, curve, kind)
    _sweep(ops, lvl, curve, halo=False)


def _coarse_solve(ops: Ops, levels: tuple[LevelPlan, ...], i: int, options: MGRITOptions, curve: Curve,
                  kind: str) -> None:
    lvl, above = levels[i], levels[i - 1]
    if above.distributed and not lvl.distributed:  # gathered: all-gather of C-points and residuals
        ops.message("allgather", above.intervals, 2)
        ops.copies += 2 * lvl.n
    ops.eval(curve, lvl.n_local)  # FAS right-hand side: one vectorised step over the level
    ops.copies += 3 * lvl.n_local  # split v, split r, join
    if lvl.m == 0:  # coarsest: serial sweep
        ops.eval(curve, 1, lvl.n)
        ops.sweeps += 1
        return
    if kind == "F":
        _cycle(ops, levels, i, options, curve, have_chat=False, kind="F")
        _cycle(ops, levels, i, options, curve, have_chat=True, kind="V")
    else:
        _cycle(ops, levels, i, options, curve, have_chat=False, kind="V")


def _nested(ops: Ops, levels: tuple[LevelPlan, ...], options: MGRITOptions, curve: Curve, vcycles: bool) -> None:
    """Nested iteration: serial sweep on the coarsest level, F-relaxation on each finer level (FMG: and a
    V-cycle on every level but the finest)."""
    coarsest = levels[-1]
    ops.eval(curve, 1, coarsest.n)
    ops.sweeps += 1
    for i in reversed(range(len(levels) - 1)):
        _sweep(ops, levels[i], curve, halo=False)
        ops.copies += levels[i].n_local
        if vcycles and i > 0:
            _cycle(ops, levels, i, options, curve, have_chat=True, kind="V")


def cycle_ops(layout: Layout, options: MGRITOptions, curve: Curve = "step") -> Ops:
    """Operations of one cycle on the finest level that starts F-relaxed (the cycles of a solve), plus the
    residual norm (a sum over the layer ranks)."""
    levels = plan_levels(layout)
    ops = Ops()
    if len(levels) == 1:
        return ops
    _cycle(ops, levels, 0, options, curve, have_chat=True, kind="F" if options.cycle == "F" else "V")
    if layout.chunks > 1:
        ops.message("allreduce", 0)
    return ops


def solve_ops(layout: Layout, options: MGRITOptions, curve: Curve = "step", *, initial: str = "guess",
              iterations: int | None = None) -> Ops:
    """Operations of one MGRIT solve of ``iterations`` cycles (default ``options.max_iter``).

    Args:
        initial: "guess" — the cheap coarse-level initial iterate first (cold start of a training step),
            "given" — a warm start (previous states), "fmg" — full multigrid start.
    """
    levels = plan_levels(layout)
    ops = Ops()
    if len(levels) == 1:  # one level: serial sweep
        ops.eval(curve, 1, levels[0].n)
        ops.sweeps += 1
        return ops
    if initial in ("guess", "fmg"):
        _nested(ops, levels, options, curve, vcycles=initial == "fmg")
    if initial != "fmg":  # F-relaxation of the given iterate, its first C-points refreshed by a halo
        _sweep(ops, levels[0], curve, halo=True)
    if layout.chunks > 1:
        ops.message("allreduce", 0)  # initial residual norm
    ops.add(cycle_ops(layout, options, curve), options.max_iter if iterations is None else iterations)
    if layout.chunks > 1:
        ops.message("allreduce", 0)  # ‖u‖ of the result (the scale of the relative residual)
    return ops


def gradient_ops(depth: int, fwd: MGRITOptions, bwd: MGRITOptions, layers: int = 1, *,
                 warm: bool = False) -> Ops:
    """Operations of one one-shot gradient on one layer rank (:class:`lpt.mgrit.MGRITSolver`): forward solve
    (``fwd.max_iter`` cycles), adjoint hierarchy (restriction and linearisation of every step of every
    level), adjoint solve (``bwd.max_iter`` cycles), layer gradient, the serial tail's r layers after the MGRIT
    part (:func:`lpt.mgrit.layout.serial_tail`: r forward steps, r adjoint steps and r layer gradients, on every
    rank), and the messages that move y_N, ȳ_0 and the layer gradients between the ranks.

    Args:
        warm: start both solves from the previous step's states (full-batch training) instead of the cheap
            coarse-level guess.
    """
    f_layout, b_layout = paired_layouts(depth, fwd, bwd, layers, tail=True)
    initial = "given" if warm else "guess"
    ops = Ops()
    # forward: gather of the restricted weights of the first gathered level, the solve, y_N to all ranks
    if layers > 1:
        ops.param_msgs[("allgather", f_layout.local_shapes[f_layout.dist].n)] += 1
        ops.message("allreduce", 1)
    ops.add(solve_ops(f_layout, fwd, "step", initial=initial))
    if f_layout.tail:  # the serial tail (one sample batch, r sequential steps each way)
        for curve in ("step", "adjoint", "theta"):
            ops.eval(curve, 1, f_layout.tail)
    # adjoint: reversed data, linearisation of every level, the solve, ȳ_0 to all ranks
    b_levels = plan_levels(b_layout)
    ops.copies += 2 * b_layout.n_local
    for lvl in b_levels:
        ops.eval("linearize", lvl.n_local)
    if layers > 1:
        ops.param_msgs[("allgather", b_layout.local_shapes[b_layout.dist].n)] += 1
        ops.message("allgather", b_layout.local_shapes[b_layout.dist].n)
        ops.message("allreduce", 1)
    ops.add(solve_ops(b_layout, bwd, "adjoint", initial=initial))
    # layer gradient, gathered over the layer ranks; divergence flag summed over the ranks
    ops.eval("theta", f_layout.n_local)
    if layers > 1:
        ops.param_msgs[("allgather", f_layout.n_local)] += 1
        ops.message("allreduce", 0)
    return ops
