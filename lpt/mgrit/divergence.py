"""The divergence test of a one-shot step's MGRIT solves (non-finite states or residuals, a growing residual)
and :func:`anywhere`, which makes every layer chunk take the same decision."""

from __future__ import annotations

import jax.numpy as jnp

from lpt.mgrit.solve import MGRITStats

ONE_CYCLE_GROWTH = 10.0
"""Growth factor of a one-cycle solve's residual that counts as divergence."""
GROWTH_ULPS = 100.0
"""A residual counts as growing only above GROWTH_ULPS·eps·‖y‖₂ (below that it is round-off)."""


def _grew(stats: MGRITStats, floor: jnp.ndarray) -> jnp.ndarray:
    """Whether the solve diverges: the residual grew in two consecutive cycles, ‖r_k‖ > ‖r_{k−1}‖ > ‖r_{k−2}‖,
    or grew by more than :data:`ONE_CYCLE_GROWTH` in a single cycle — in both cases above the round-off floor
    or a residual exceeds the norm of the states (‖r_k‖ > ‖u‖₂: the iterate has blown up) — counting cycles
    k ≥ 2 only (DESIGN §3: "factor > 1 over two cycles").

    Cycle 1 is left out: its start, a warm start or a coarse guess, has a small residual but a larger error —
    the residual at a C-point is the discrepancy of one interval, the error the sum of the discrepancies of all
    earlier intervals carried along the layers. The first cycle removes most of that accumulated error and
    leaves a rough remainder whose residual is as large as the remainder, so ‖r_1‖ > ‖r_0‖ while the error
    falls (measured on the main job: the forward error falls ≈ 9× over two cycles in every step while ‖r_1‖/‖r_0‖
    is 1.3–2.6; adjoint residuals grow up to ≈ 11× in cycle 1; README "One-shot accuracy").
    """
    seq = jnp.concatenate([stats.initial_residual[None], stats.residuals])
    k = jnp.arange(1, seq.shape[0])
    done = (k <= stats.iterations) & (k >= 2)
    up = done & (seq[1:] > seq[:-1]) & (seq[1:] > floor)
    twice = jnp.any(up[1:] & up[:-1])
    jump = jnp.any(done & (seq[1:] > ONE_CYCLE_GROWTH * seq[:-1]) & (seq[1:] > floor))
    # a residual larger than the states themselves (a blown-up iterate)
    blown = jnp.any(done & (seq[1:] > stats.state_norm))
    return twice | jump | blown


def _finite(stats: MGRITStats) -> jnp.ndarray:
    """Whether the residuals of all cycles done are finite."""
    done = jnp.arange(stats.residuals.shape[0]) < stats.iterations
    return jnp.all(jnp.isfinite(stats.residuals) | ~done)


def solve_diverged(states: jnp.ndarray, stats: MGRITStats) -> jnp.ndarray:
    """Whether a solve with result ``states`` diverged: non-finite states or residuals, or a residual that grows
    (:func:`_grew`) above the round-off floor GROWTH_ULPS·eps·‖states‖₂."""
    # in the states' dtype: under NumPy 1.x a Python float times finfo's float32 eps is a float64 scalar
    floor = jnp.asarray(GROWTH_ULPS * jnp.finfo(states.dtype).eps, states.dtype) * jnp.sqrt(jnp.sum(jnp.square(states)))
    return ~jnp.all(jnp.isfinite(states)) | ~_finite(stats) | _grew(stats, floor)


def anywhere(comm, flag: jnp.ndarray) -> jnp.ndarray:
    """True on every chunk if ``flag`` is set on any chunk (all chunks then take the same branch)."""
    return comm.layer_sum(flag.astype(jnp.int32)) > 0
