"""Stability of the coarse-level steps: H·ρ per MGRIT level (README "Large T and coarse-step stability").

A coarse level of MGRIT takes forward-Euler steps H = Σ_{k<m^ℓ} h (m^ℓ fine layers at once) with the restricted
weights. For the step Φ(y) = y + H F(θ, y) linearised at a state, the error propagates with I + H J,
J = ∂F/∂y; forward Euler keeps |1 + Hλ| ≤ 1 for the decaying modes only while H·ρ(J) < 2. Beyond that the
coarse level amplifies exactly the modes it should damp and MGRIT converges slowly or diverges, however good
the fine level is (tests/test_stability.py shows it on y' = −y).

:func:`coarse_step_stability` estimates max_j H^ℓ_j ρ(J^ℓ_j) on every level ℓ ≥ 1, linearised at the serial
states of a few samples at the coarse points: ρ by the power method on J (Gelfand's formula,
ρ = lim ‖J^k v‖^{1/k}, over ``iters`` products after ``burn`` products; exact for a dominant real eigenvalue,
the modulus of a dominant complex pair otherwise), all steps of a level at once. It costs ``iters`` Jacobian
products per coarse step on a few samples: far less than a training step.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from lpt.mgrit.hierarchy import LevelShape, flat_levels
from lpt.model import Step
from lpt.model.propagate import propagate_states

STABLE_LIMIT = 2.0
"""Forward Euler is stable for the decaying modes of the linearised step while H·ρ < 2."""
GROWTH_LIMIT = 100.0
"""A level is warned about when a decaying mode could grow more than this over its steps (:func:`stability_message`)."""


def spectral_radius(step: Step, theta_n: Any, y: jnp.ndarray, iters: int = 24, burn: int = 6) -> jnp.ndarray:
    """Estimate ρ(J) of J = ∂F/∂y at ``y`` (states of a few samples), F(y) = step(θ_n, y, 1) − y: the geometric
    mean growth ‖Jᵀ v_k‖/‖v_k‖ of the power method over products ``burn`` … ``iters``−1 from a fixed
    pseudo-random start (a hash of the index: no PRNG, whose vectorised compilation is slow on CPU).
    With several samples J is block diagonal and the estimate is the largest block's."""
    # products with Jᵀ (ρ(Jᵀ) = ρ(J)): reverse mode works for every step, also custom-VJP convolutions
    _, vjp = jax.vjp(lambda u: step(theta_n, u, jnp.ones((), y.dtype)) - u, y)
    i = jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)
    v = jnp.sin(i * 12.9898 + 1.0) * 43758.5453
    v = v - jnp.floor(v) - 0.5
    v = v / jnp.linalg.norm(v)

    def body(k, carry):
        v, log_growth = carry
        (w,) = vjp(v)
        norm = jnp.linalg.norm(w)
        log_growth = log_growth + jnp.where(k >= burn, jnp.log(jnp.maximum(norm, jnp.finfo(y.dtype).tiny)), 0)
        return w / jnp.where(norm > 0, norm, 1), log_growth

    _, log_growth = jax.lax.fori_loop(0, iters, body, (v, jnp.zeros((), y.dtype)))
    return jnp.exp(log_growth / (iters - burn))


@partial(jax.jit, static_argnames=("step", "shapes", "restrict"))
def coarse_step_stability(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray, shapes: tuple[LevelShape, ...],
                          restrict) -> jnp.ndarray:
    """max_j H^ℓ_j·ρ(J^ℓ_j) of every coarse level ℓ = 1 … L−1 (shape (L−1,); empty for one level).

    Args:
        step: the layer step.
        theta, hs: the finest level's weights and step sizes (N, …), (N,), padded to ``shapes[0].n``.
        y0: initial states of a few samples (B, …); the steps are linearised at their serial states.
        shapes: the level sizes (:func:`lpt.mgrit.hierarchy.level_shapes` of the padded depth).
        restrict: the coarse-weight restriction of the solve (inject or average).
    """
    ys = propagate_states(step, theta, hs, y0)
    out = []
    stride = 1  # fine steps per step of the current level
    for level, (shape, (data, h)) in enumerate(zip(shapes, flat_levels(theta, hs, shapes, restrict))):
        if level > 0:
            # linearised at the fine state where each coarse step starts (identity padding: H = 0)
            points = ys[jnp.minimum(jnp.arange(h.shape[0]) * stride, ys.shape[0] - 1)]
            rho = jax.vmap(partial(spectral_radius, step))(data, points)
            out.append(jnp.max(h * rho))
        stride *= shape.m or 1
    return jnp.stack(out) if out else jnp.zeros((0,), y0.dtype)


def stability_message(values, shapes: tuple[LevelShape, ...], h: float) -> str | None:
    """One line naming the first coarse level that is unstable enough to matter, and what to change; None if
    there is none.

    A level counts when H·ρ ≥ 2 and a decaying mode at the estimate, amplified by |1 − H·ρ| per coarse step,
    could grow more than :data:`GROWTH_LIMIT`-fold over the level's n_ℓ steps: (H·ρ − 1)^{n_ℓ} > 100. A short
    level (the main job's 2-step coarsest level, H·ρ ≈ 3.5 at the initial weights and ≈ 4.9 after 1000 steps,
    amplifies at most ≈ 15×) only blunts the coarse correction, which the fine relaxation absorbs; a long one
    compounds the growth.

    Args:
        values: :func:`coarse_step_stability`'s result; shapes: its level sizes; h: the fine step size.
    """
    stride = 1
    for level, value in enumerate(values, start=1):
        stride *= shapes[level - 1].m
        n = shapes[level].n
        if value >= STABLE_LIMIT and (value - 1) ** n > GROWTH_LIMIT:
            return (f"MGRIT coarse level {level} of {len(shapes) - 1} ({n} step{'s' if n > 1 else ''} of "
                    f"H = {stride}·h = {stride * h:.3g}) "
                    f"has H·ρ ≈ {float(value):.3g} ≥ {STABLE_LIMIT:g} (ρ: spectral radius of the linearised layer "
                    f"step): forward Euler is unstable there and can amplify errors up to {float(value) - 1:.3g}^{n} "
                    f"over the level, so MGRIT may converge slowly or diverge; use fewer levels (solver.max_levels) "
                    f"or a larger solver.min_coarse, a smaller solver.cfactor, a smaller model.T, or smaller "
                    f"weights (model.init_scale, model.gamma_tik)")
    return None
