"""Serial forward propagation through the residual layers: the reference every solver is compared with."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Step = Callable[[Any, jnp.ndarray, jnp.ndarray], jnp.ndarray]
"""A step y_{n+1} = Φ_n(y_n) = step(θ_n, y_n, h_n); θ_n is one layer's slice of the stacked parameters."""


def propagate(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray) -> jnp.ndarray:
    """Serial sweep y_{n+1} = step(θ_n, y_n, h_n), n = 0..N−1, by ``lax.scan``; returns y_N.

    Under differentiation each step is rematerialised (``jax.checkpoint``): the scan keeps only the states
    y_n, and the backward pass recomputes a step's intermediates. That is less memory and, measured on CPU,
    faster (one-off comparison: conv2 step, 8 channels, 32×32: 11.1 → 8.1 ms per layer step fwd+bwd; dense
    width 8, batch 5000: 0.44 → 0.29 ms), since the stacked intermediates leave the caches.

    Args:
        step: the layer step.
        theta: pytree of stacked layer parameters, leading axis N.
        hs: step sizes, shape (N,).
        y0: initial state.
    """
    remat = jax.checkpoint(step)
    yN, _ = jax.lax.scan(lambda y, inp: (remat(inp[0], y, inp[1]), None), y0, (theta, hs))
    return yN


def propagate_states(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray) -> jnp.ndarray:
    """Serial sweep returning all states y_0..y_N stacked along a new leading axis (N+1, ...)."""

    def body(y, inp):
        y1 = step(inp[0], y, inp[1])
        return y1, y1

    _, ys = jax.lax.scan(body, y0, (theta, hs))
    return jnp.concatenate([y0[None], ys], axis=0)
