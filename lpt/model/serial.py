"""The serial gradient strategy and the contract every gradient strategy ("solver") meets.

``SerialSolver`` propagates by ``lax.scan`` and differentiates with ``jax.grad``: the reference that the
layer-parallel solver (:class:`lpt.mgrit.MGRITSolver`) is checked against and falls back to. It lives beside the
network, below both :mod:`lpt.mgrit` and :mod:`lpt.train`, which both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from lpt.model.protocol import Model, Params


class Solver(Protocol):
    """The contract between the trainer and a gradient strategy."""

    def init_state(self, model: Model, params: Params, x: jnp.ndarray) -> Any:
        """Warm-start state for a batch ``x`` (a pytree; may be empty)."""

    def value_and_grad(
        self, model: Model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state: Any
    ) -> tuple[jnp.ndarray, dict, Params, Any, dict]:
        """Return (objective, aux, grads, new_state, stats); aux = {"loss", "outputs"}; stats fixed-shape arrays."""

    def value(self, model: Model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state: Any) -> jnp.ndarray:
        """The objective alone (for line searches)."""


def data_objective(model: Model, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """Serial data loss loss(output, y) without the regularisation, with aux {"loss", "outputs"}."""
    outputs = model.forward(params, x)
    loss = model.data_loss(outputs, y)
    return loss, {"loss": loss, "outputs": outputs}


def objective(model: Model, params: Params, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """Serial objective loss(output, y) + regularisation(θ), with aux {"loss", "outputs"}."""
    loss, aux = data_objective(model, params, x, y)
    return loss + model.regularization(params), aux


@dataclass(frozen=True)
class SerialSolver:
    """Forward propagation by ``lax.scan`` and the gradient by ``jax.grad``: the reference strategy."""

    def init_state(self, model: Model, params: Params, x: jnp.ndarray) -> tuple:
        return ()

    def value_and_grad(self, model, params, x, y, state):
        (obj, aux), grads = jax.value_and_grad(lambda p: objective(model, p, x, y), has_aux=True)(params)
        return obj, aux, grads, state, {}

    def value(self, model, params, x, y, state):
        return objective(model, params, x, y)[0]
