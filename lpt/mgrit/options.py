"""Settings of one MGRIT solve (forward or adjoint), validated at construction time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lpt.config.choices import CYCLES, RESTRICTIONS
from lpt.config.fields import check_attributes
from lpt.config.run import MGRITSolverOptions

Cycle = Literal["V", "F", "FMG"]
Restrict = Literal["inject", "average"]

__all__ = ["CYCLES", "RESTRICTIONS", "MGRITOptions", "require"]

_SCHEMA_OPTIONS = {name: name for name in ("cfactor", "max_levels", "min_coarse", "nrelax", "nrelax_fine", "cycle",
                                            "abs_tol", "rel_tol", "restrict", "skip_first_down", "interval_batch")}
_SCHEMA_OPTIONS["growth_iter"] = "growth_cycles"
"""The options of :class:`MGRITOptions` and the fields of the solver's schema they are."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require(cond: bool, message: str) -> None:
    """Raise a ValueError with ``message`` (naming the config option) unless ``cond``."""
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class MGRITOptions:
    """Options of the FAS-MGRIT solver (Falgout et al. 2014; Günther et al. 2020).

    Frozen and hashable, so they can be static arguments of ``jax.jit``.

    Attributes:
        cfactor: coarsening factor m_ℓ: C-points of level ℓ are i = j·m_ℓ. One integer for all levels, or a
            tuple with one value per level (the last value is repeated for further levels).
        max_levels: number of levels at most; 1 makes the solver the serial sweep.
        min_coarse: a level with at most this many steps is the coarsest (solved by a serial sweep).
        nrelax: CF-sweeps after the first F-relaxation on the coarse levels (0 = F, 1 = FCF, ...).
        nrelax_fine: the same on the finest level; None means ``nrelax``.
        cycle: "V", "F" (F-cycle) or "FMG" (nested iteration from the coarsest level, then V-cycles).
        max_iter: number of cycles at most (exactly this many when no tolerance is set).
        abs_tol: stop when ‖r‖₂ ≤ abs_tol (0 = off).
        rel_tol: stop when ‖r‖₂ ≤ rel_tol·‖r_0‖₂ (0 = off).
        restrict: coarse-level weights, "inject" (θ^{ℓ+1}_j = θ^ℓ_{jm}) or "average" (step-size weighted mean
            of θ^ℓ over the interval).
        interval_batch: intervals per vectorised step call (:mod:`lpt.mgrit.batching`): "auto", 0 (all
            at once) or k ≥ 1. Changes the speed only, never the iterates.
        skip_first_down: XBraid's ``skip`` (TorchBraid's default): from the coarse-level initial guess
            (nested iteration) the first cycle's down-sweep is skipped, so the guess itself counts as cycle 1
            and ``max_iter`` − 1 full cycles follow. No effect on warm-started solves or FMG.
        growth_iter: with no tolerance set (``max_iter`` cycles), up to this many more cycles while the
            residual is above the F-relaxed initial iterate's ‖r_0‖₂ (a warm start the cycles made worse:
            README "One-shot accuracy"); 0 = exactly ``max_iter`` cycles.
    """

    # the run's defaults (the schema's) where the option is the run's; one solve's own where it differs
    cfactor: int | tuple[int, ...] = MGRITSolverOptions.cfactor
    max_levels: int = MGRITSolverOptions.max_levels
    min_coarse: int = MGRITSolverOptions.min_coarse
    nrelax: int = MGRITSolverOptions.nrelax
    nrelax_fine: int | None = None
    cycle: Cycle = MGRITSolverOptions.cycle
    max_iter: int = 2
    abs_tol: float = MGRITSolverOptions.abs_tol
    rel_tol: float = MGRITSolverOptions.rel_tol
    restrict: Restrict = MGRITSolverOptions.restrict
    interval_batch: int | str = MGRITSolverOptions.interval_batch
    skip_first_down: bool = MGRITSolverOptions.skip_first_down
    growth_iter: int = 0

    def __post_init__(self) -> None:
        cf = tuple(self.cfactor) if isinstance(self.cfactor, (list, tuple)) else self.cfactor
        object.__setattr__(self, "cfactor", cf)
        # ranges and messages of the options the run shares are the schema's (lpt.config.run.MGRITSolverOptions)
        check_attributes(self, MGRITSolverOptions, _SCHEMA_OPTIONS, "solver")
        # max_iter is solver.fwd_iters or solver.bwd_iters of a run (the schema checks those by their names)
        require(_is_int(self.max_iter) and self.max_iter >= 1,
                f"solver.max_iter={self.max_iter!r} must be an integer ≥ 1 (number of cycles; "
                f"solver.fwd_iters / solver.bwd_iters in the config)")

    def cfactor_at(self, level: int) -> int:
        """The coarsening factor m_ℓ of level ``level`` (the last listed value repeats)."""
        if isinstance(self.cfactor, tuple):
            return self.cfactor[min(level, len(self.cfactor) - 1)]
        return self.cfactor

    def nrelax_at(self, level: int) -> int:
        """CF-sweeps after the first F-relaxation on level ``level`` (``nrelax_fine`` on level 0)."""
        if level == 0 and self.nrelax_fine is not None:
            return self.nrelax_fine
        return self.nrelax

    @property
    def has_tolerance(self) -> bool:
        """Whether a stopping tolerance is set (then the cycles run in a ``lax.while_loop``)."""
        return self.abs_tol > 0 or self.rel_tol > 0

    @property
    def most_iter(self) -> int:
        """Cycles of one solve at most: ``max_iter``, and ``growth_iter`` more without a tolerance."""
        return self.max_iter + (0 if self.has_tolerance else self.growth_iter)
