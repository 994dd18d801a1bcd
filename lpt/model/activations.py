"""Activation functions σ of the residual step (DESIGN §1)."""

from __future__ import annotations

from typing import Callable, Literal

import jax.numpy as jnp

Activation = Literal["tanh", "relu", "smoothrelu", "identity"]

SMOOTHRELU_ETA = 0.1


def smoothrelu(x: jnp.ndarray, eta: float = SMOOTHRELU_ETA) -> jnp.ndarray:
    """ReLU with a quadratic blend on |x| < η.

    σ(x) = 0 for x ≤ −η, (x + η)² / (4η) for |x| < η, x for x ≥ η (Günther et al. 2020). It is C¹.
    """
    blend = (x + eta) ** 2 / (4.0 * eta)
    return jnp.where(x <= -eta, jnp.zeros_like(x), jnp.where(x >= eta, x, blend))


def relu(x: jnp.ndarray) -> jnp.ndarray:
    """max(x, 0)."""
    return jnp.maximum(x, 0)


def identity(x: jnp.ndarray) -> jnp.ndarray:
    """σ(x) = x: a linear network (used by exactness tests, e.g. the parareal Proposition 1)."""
    return x


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "tanh": jnp.tanh,
    "relu": relu,
    "smoothrelu": smoothrelu,
    "identity": identity,
}


def get_activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Return σ by name; an unknown name raises a ValueError listing the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"model.activation={name!r} is not a known activation; choose one of {sorted(ACTIVATIONS)}"
        ) from None
