"""The inexactness control of the one-shot training strategy (:class:`Control`, its state :class:`Adaptive`) and
the bias check's :func:`cosine` between the one-shot and the exact gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from lpt.config.fields import check_attributes
from lpt.config.run import MGRITSolverOptions


_SCHEMA_OPTIONS = {"kind": "control", "tol": "control_tol", "max_iters": "control_max_iters",
                   "every": "control_every", "min_cos": "control_min_cos", "tightenings": "control_tightenings"}
"""The attributes of :class:`Control` and the solver schema's options they are."""


class Adaptive(NamedTuple):
    """State of the adaptive inexactness control: the warm-start states (or ()), the ``mode`` (k ≤
    ``tightenings``: relative tolerance control_tol·10^−k; ``tightenings`` + 1: serial for the rest of the run)
    and the number of steps done (the bias check runs every ``every`` steps)."""

    warm: Any
    mode: jnp.ndarray
    count: jnp.ndarray


@dataclass(frozen=True)
class Control:
    """Inexactness control of the one-shot solves (Jiang et al. 2026; README "One-shot accuracy and
    inexactness control").

    ``fixed``: exactly fwd_iters / bwd_iters cycles per step (the one-shot method of Günther et al. 2020).
    ``adaptive``: each solve runs cycles until its residual is below ``tol``·10^−mode relative to the norm of
    its states (‖r‖₂ ≤ tol·10^−mode·‖y‖₂, resp. ‖ȳ‖₂), at least fwd_iters / bwd_iters and at most
    ``max_iters`` cycles; every ``every`` steps the one-shot gradient is compared with the exact (serial)
    gradient, and a cosine below ``min_cos`` (a gradient biased enough to stall training) tightens the
    tolerance ten-fold (mode + 1); after ``tightenings`` tightenings the next bias switches the run to serial
    training (mode = tightenings + 1) for good.
    """

    kind: Literal["fixed", "adaptive"] = MGRITSolverOptions.control
    tol: float = MGRITSolverOptions.control_tol
    max_iters: int = MGRITSolverOptions.control_max_iters
    every: int = MGRITSolverOptions.control_every
    min_cos: float = MGRITSolverOptions.control_min_cos
    tightenings: int = MGRITSolverOptions.control_tightenings

    def __post_init__(self) -> None:
        # ranges and messages: the schema's options solver.control and solver.control_* (lpt.config.run)
        check_attributes(self, MGRITSolverOptions, _SCHEMA_OPTIONS, "solver")

    @property
    def adaptive(self) -> bool:
        return self.kind == "adaptive"

    @property
    def serial_mode(self) -> int:
        return self.tightenings + 1

    def target(self, mode: jnp.ndarray) -> jnp.ndarray:
        """The relative tolerance of ``mode``: tol·10^−mode (the last tightening's in serial mode)."""
        return self.tol * 10.0 ** (-jnp.minimum(mode, self.tightenings).astype(jnp.float32))


def cosine(comm, a: Any, b: Any, local_layers: bool = False) -> jnp.ndarray:
    """cos∠(a, b) of two gradients (pytrees) summed over the data-parallel ranks — the gradients the optimiser
    sees (each rank differentiates the mean loss of its own samples) — the same on every rank and grid. With
    ``local_layers`` the ``"layers"`` entries are each chunk's: their dot products are summed over the chunks."""
    a, b = comm.data_sum(a), comm.data_sum(b)  # message: two gradients, at the bias checks only

    def leaves(u, v):
        return sum(jnp.vdot(p, q).astype(jnp.float32) for p, q in zip(jax.tree_util.tree_leaves(u),
                                                                      jax.tree_util.tree_leaves(v)))

    def dot(u, v):
        if not local_layers:
            return leaves(u, v)
        rest = lambda t: {k: w for k, w in t.items() if k != "layers"}  # noqa: E731
        return leaves(rest(u), rest(v)) + comm.layer_sum(leaves(u["layers"], v["layers"]))

    return dot(a, b) / jnp.sqrt(jnp.maximum(dot(a, a) * dot(b, b), jnp.finfo(jnp.float32).tiny))
