"""Gradient strategies ("solvers"): how the objective and its gradient are computed for a batch.

A solver implements the :class:`Solver` protocol. ``serial`` propagates by ``lax.scan`` and differentiates with
``jax.grad`` (the reference); ``mgrit`` (:mod:`lpt.mgrit`) solves forward and adjoint propagation with MGRIT.
The trainer never knows which one it drives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp

from lpt.model import Params, ResNet


class Solver(Protocol):
    """The contract between the trainer and a gradient strategy."""

    def init_state(self, model: ResNet, params: Params, x: jnp.ndarray) -> Any:
        """Warm-start state for a batch ``x`` (a pytree; may be empty)."""

    def value_and_grad(
        self, model: ResNet, params: Params, x: jnp.ndarray, y: jnp.ndarray, state: Any
    ) -> tuple[jnp.ndarray, dict, Params, Any, dict]:
        """Return (objective, aux, grads, new_state, stats); aux = {"loss", "outputs"}; stats fixed-shape arrays."""

    def value(self, model: ResNet, params: Params, x: jnp.ndarray, y: jnp.ndarray, state: Any) -> jnp.ndarray:
        """The objective alone (for line searches)."""


def objective(model: ResNet, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """Serial objective loss(output, y) + regularisation(θ), with aux {"loss", "outputs"}."""
    outputs = model.forward(params, x)
    loss = model.data_loss(outputs, y)
    return loss + model.regularization(params), {"loss": loss, "outputs": outputs}


@dataclass(frozen=True)
class SerialSolver:
    """Forward propagation by ``lax.scan`` and the gradient by ``jax.grad``: the reference strategy."""

    def init_state(self, model: ResNet, params: Params, x: jnp.ndarray) -> tuple:
        return ()

    def value_and_grad(self, model, params, x, y, state):
        (obj, aux), grads = jax.value_and_grad(lambda p: objective(model, p, x, y), has_aux=True)(params)
        return obj, aux, grads, state, {}

    def value(self, model, params, x, y, state):
        return objective(model, params, x, y)[0]


SOLVERS = ("serial", "mgrit")


def make_solver(cfg: Mapping[str, Any], *, full_batch: bool) -> Solver:
    """Build the solver named by ``cfg["name"]`` (config group ``solver``)."""
    name = cfg.get("name")
    if name == "serial":
        return SerialSolver()
    if name == "mgrit":
        from lpt.mgrit.training import MGRITSolver

        return MGRITSolver.from_config(cfg, full_batch=full_batch)
    raise ValueError(f"solver.name={name!r} is not a known solver; choose one of {list(SOLVERS)}")
