"""Gradient strategies ("solvers"): how the objective and its gradient are computed for a batch.

A solver implements the :class:`Solver` protocol. ``serial`` propagates by ``lax.scan`` and differentiates with
``jax.grad`` (the reference); ``mgrit`` (:mod:`lpt.mgrit`) solves forward and adjoint propagation with MGRIT.
The trainer never knows which one it drives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lpt.config.run import MGRITSolverOptions
from lpt.mgrit.training import MGRITSolver
from lpt.model.serial import SerialSolver, Solver, objective

__all__ = ["SOLVERS", "SerialSolver", "Solver", "for_batch", "make_solver", "objective"]


SOLVERS = ("serial", "mgrit")


def make_solver(cfg: Mapping[str, Any], *, full_batch: bool) -> Solver:
    """Build the solver named by ``cfg["name"]`` (config group ``solver``)."""
    name = cfg.get("name")
    if name == "serial":
        return SerialSolver()
    if name == "mgrit":
        return MGRITSolver.from_config(cfg, full_batch=full_batch)
    raise ValueError(f"solver.name={name!r} is not a known solver; choose one of {list(SOLVERS)}")


def for_batch(solver: Solver, cfg: Mapping[str, Any], *, full_batch: bool) -> Solver:
    """``solver`` = ``make_solver(cfg, full_batch=True)`` (as :func:`lpt.train.validate.validate_config` builds
    it) for a run whose batches are full or not: ``warm_start: auto`` means warm starts exactly for full
    batches (the solver keeps its other options)."""
    auto = cfg.get("warm_start", MGRITSolverOptions.warm_start) == "auto"
    if auto and getattr(solver, "warm_start", full_batch) != full_batch:
        return dataclasses.replace(solver, warm_start=full_batch)
    return solver
