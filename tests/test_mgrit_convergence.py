"""Convergence of FCF V-cycles on the design benchmark (DESIGN §2): tanh, width 8, T = 5, random weights.

Target: mean residual reduction over cycles 2–6 ≤ 0.35 for N = 64 … 4096, flat in N (max/min ≤ 1.5), and
the adjoint solve within a factor 2 of the forward one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from lpt.mgrit import MGRITOptions, adjoint_solve, convergence_factor, level_shapes, mgrit_solve
from lpt.model import ResNet

DEPTHS = (64, 256, 1024, 4096)
OPTIONS = MGRITOptions(cfactor=4, max_levels=10, min_coarse=2, nrelax=1, max_iter=6)


def factors(depth: int) -> tuple[float, float, int]:
    """(forward factor, adjoint factor, levels): geometric means of ‖r_k‖/‖r_{k−1}‖ over cycles 2–6, for a random
    network of this depth."""
    model = ResNet(input_shape=(2,), num_outputs=5, depth=depth, width=8, T=5.0, activation="tanh", init_scale=1.0)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 2), jnp.float64, -3.0, 3.0)

    @jax.jit  # one program (op by op, every level's loop would be dispatched and compiled apart)
    def solve(params, x):
        y0 = model.open(params, x)
        hs = model.step_sizes(y0.dtype)
        ys, fwd = mgrit_solve(model.step, params["layers"], hs, y0, OPTIONS)
        ybar_final = jax.random.normal(jax.random.PRNGKey(2), y0.shape, y0.dtype)
        _, bwd = adjoint_solve(model.step, params["layers"], hs, ys, ybar_final, OPTIONS)
        return fwd, bwd

    fwd, bwd = solve(params, x)
    return (float(convergence_factor(fwd, 2, 6)), float(convergence_factor(bwd, 2, 6)),
            len(level_shapes(depth, OPTIONS)))


@pytest.fixture(scope="module")
def measured() -> dict[int, tuple[float, float, int]]:
    return {depth: factors(depth) for depth in DEPTHS}


@pytest.mark.slow(seconds=41)
def test_fcf_v_cycle_factor_below_design_target_and_flat_in_depth(measured):
    for depth, (fwd, bwd, levels) in measured.items():
        print(f"N={depth:5d} levels={levels} forward factor={fwd:.3f} adjoint factor={bwd:.3f}")
        assert levels >= 4 if depth == 64 else levels >= 5
        assert fwd <= 0.35, (depth, fwd)
    fwd_factors = [fwd for fwd, _, _ in measured.values()]
    assert max(fwd_factors) / min(fwd_factors) <= 1.5, fwd_factors


def test_adjoint_converges_like_forward(measured):
    for depth, (fwd, bwd, _) in measured.items():
        assert 0.5 * fwd <= bwd <= 2.0 * fwd, (depth, fwd, bwd)
