"""Uneven layer chunks (DESIGN §4, :mod:`lpt.mgrit.layout`): the first P−1 chunks hold s fine steps, the last the
rest, padded per level like one chunk; chunks with fewer steps than the static size of their arrays hold dead
identity steps at their local end. The iterates at the real points are those of one chunk, forward and adjoint,
and the dead steps never reach the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, MGRITSolver, adjoint_solve, mgrit_solve
from lpt.mgrit.adjoint import adjoint_chunk
from lpt.mgrit.layout import chunk, chunk_real, make_layout
from lpt.mgrit.solve import forward_chunk
from lpt.model import ResNet
from lpt.model.serial import SerialSolver
from lpt.parallel import ProcessorGrid
from lpt.parallel.sharded import REPLICATED, on_mesh

F64 = jnp.float64


def _problem(depth: int):
    model = ResNet(input_shape=(2,), num_outputs=3, depth=depth, width=4, T=5.0)
    params = model.init(jax.random.PRNGKey(0), F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 2), F64, -3.0, 3.0)
    return model, params, x


def _owned(local: jnp.ndarray, layout) -> jnp.ndarray:
    """Global points 0..N from the chunks' points (chunks·(n_local+1), …): chunk p's points 1..s, the last's 1..r."""
    blocks = local.reshape(layout.chunks, layout.n_local + 1, *local.shape[1:])
    owned = [blocks[p, 1: 1 + layout.stride] for p in range(layout.chunks - 1)]
    return jnp.concatenate([blocks[0, :1], *owned, blocks[-1, 1: 1 + layout.last_real]])


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("depth,m,chunks,cycle", [(13, 2, 2, "V"), (37, 3, 3, "V"), (37, 3, 2, "F"),
                                                  (70, 4, 4, "V"), (100, 4, 3, "V"), (129, 2, 4, "FMG")])
def test_uneven_chunks_give_the_iterates_of_one_chunk(depth, m, chunks, cycle):
    """Two cycles of forward and adjoint MGRIT (cold start: the nested iteration) on P mesh chunks equal the
    one-chunk solve at every real point to 1e-12 in float64, on depths whose last chunk is larger than the others
    (so they hold dead steps) or smaller."""
    model, params, x = _problem(depth)
    opts = MGRITOptions(cfactor=m, max_levels=4, min_coarse=2, max_iter=2, nrelax=1, cycle=cycle)
    layout = make_layout(depth, opts, chunks)
    assert layout.chunks == chunks and len(set(c for counts in layout.counts for c in counts.padded)) > 1
    theta, hs, y0 = params["layers"], model.step_sizes(F64), model.open(params, x)
    u, stats = mgrit_solve(model.step, theta, hs, y0, opts)
    assert float(stats.residuals[-1]) > 1e-8  # not converged: the iterates depend on the hierarchy
    ybar = jnp.ones_like(y0)
    w, _ = adjoint_solve(model.step, theta, hs, u, ybar, opts)
    grid = ProcessorGrid("mesh", layers=chunks)
    comm = grid.comm()

    def local(theta, hs, y0):
        rank = comm.layer_rank()
        theta_c, hs_c = chunk(theta, rank, layout), chunk_real(hs, rank, layout)
        ys, y_final, _ = forward_chunk(model.step, theta_c, hs_c, y0, opts, layout, comm)
        ybars, _ = adjoint_chunk(model.step, theta_c, hs_c, ys, jnp.ones_like(y_final), opts, layout, comm)
        return ys, ybars, y_final

    spec = jax.sharding.PartitionSpec("layers")
    ys, ybars, y_final = jax.jit(on_mesh(local, grid, (REPLICATED,) * 3, (spec, spec, REPLICATED)))(theta, hs, y0)
    np.testing.assert_allclose(_owned(ys, layout), u, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(u))))
    np.testing.assert_allclose(y_final, u[-1], rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(u))))
    np.testing.assert_allclose(_owned(ybars, layout), w, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(w))))


@pytest.mark.slow(seconds=40)
def test_dead_steps_never_reach_the_gradient():
    """The MGRIT gradient of an uneven depth on 2 mesh chunks (N = 37, cfactor 3: chunks of 18 and 19 steps, so the
    first holds dead steps), converged, equals ``jax.grad`` of the serial network to 1e-9; the layer gradient has
    exactly N rows."""
    model, params, x = _problem(37)
    y = jnp.arange(3) % model.num_outputs
    opts = MGRITOptions(cfactor=3, max_levels=3, min_coarse=2, max_iter=40, abs_tol=1e-14, nrelax=1)
    layout = make_layout(37, opts, 2)
    assert layout.counts[0].padded[0] < layout.n_local  # the first chunk holds dead steps
    grid = ProcessorGrid("mesh", layers=2)
    solver = MGRITSolver(fwd=opts, bwd=opts, warm_start=False, on_divergence="error", comm=grid.comm())

    def local(params, x, y):
        return solver.value_and_grad(model, params, x, y, ())[:3:2]

    obj, grads = jax.jit(on_mesh(local, grid, (REPLICATED,) * 3, (REPLICATED, REPLICATED)))(params, x, y)
    ref_obj, _, ref = SerialSolver().value_and_grad(model, params, x, y, ())[:3]
    assert jax.tree_util.tree_leaves(grads["layers"])[0].shape[0] == 37
    assert abs(float(obj) - float(ref_obj)) <= 1e-10 * abs(float(ref_obj))
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * float(jnp.max(jnp.abs(want))) + 1e-14)
