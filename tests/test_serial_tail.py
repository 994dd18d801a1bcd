"""The serial tail (issue 13, "no padding waste"; :func:`lpt.mgrit.layout.serial_tail`): the training solver
solves the first N − r layers by MGRIT and the last r serially in the head, r the fewest layers that leave a
depth without padding (N = 1025 → 1024 + 1 with cfactor 4), where that costs less than the padding. The
gradient is the serial network's once converged, every processor grid gives the same iterates, and the counted
work of N = 1025 is that of N = 1024 plus the tail's steps, on 1 to 8 chunks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, MGRITSolver
from lpt.mgrit.hierarchy import level_shapes
from lpt.mgrit.layout import make_layout, paired_layouts, serial_tail, spread, stored_chunk, unspread
from lpt.model import ResNet
from lpt.model.serial import SerialSolver
from lpt.parallel import ProcessorGrid
from lpt.parallel.sharded import REPLICATED, on_mesh
from lpt.perfmodel.work import cycle_ops, gradient_ops, layout_for

F64 = jnp.float64
OPTS = MGRITOptions(cfactor=4, max_levels=6, min_coarse=2, nrelax=1)


def _whole(depth: int, opts: MGRITOptions) -> bool:
    return all(s.n % s.m == 0 for s in level_shapes(depth, opts)[:-1])


@pytest.mark.parametrize("depth, tail", [(1025, 1), (1027, 3), (4097, 1), (65, 1), (37, 5), (1024, 0), (1100, 0),
                                         (70, 0)])
def test_the_tail_is_the_fewest_layers_that_leave_no_padding_where_it_is_cheaper(depth, tail):
    """r = 1 for 1025 (1024 = 4⁵); 0 for a whole depth (1024) and where 3r layer steps cost more than one sweep's
    padding (1100: r would be 76, 228 steps against the padding's 113 per sweep; 70: r = 6, 18 steps against 17)."""
    r = serial_tail(depth, OPTS)
    assert r == tail
    padded = lambda d: sum(s.padded for s in level_shapes(d, OPTS))  # noqa: E731
    if r:
        assert _whole(depth - r, OPTS) and not any(_whole(depth - k, OPTS) for k in range(r))
        assert 3 * r <= padded(depth) - padded(depth - r)
    elif not _whole(depth, OPTS):
        first = next(k for k in range(1, depth) if _whole(depth - k, OPTS))
        assert 3 * first > padded(depth) - padded(depth - first)


@pytest.mark.parametrize("chunks", [1, 2, 4, 8])
def test_depth_1025_costs_what_1024_costs_on_every_number_of_chunks(chunks):
    """The performance model's counts (the largest chunk's): one cycle of N = 1025 equals one of N = 1024, one
    gradient is 2 layer steps more (the tail's forward and adjoint step; before: 1.085× on 4 chunks, 1.149× on 8)."""
    layouts = [paired_layouts(n, OPTS, OPTS, chunks, tail=True)[0] for n in (1024, 1025)]
    assert [(lay.n, lay.tail) for lay in layouts] == [(1024, 0), (1024, 1)]
    assert cycle_ops(layouts[1], OPTS).work == cycle_ops(layouts[0], OPTS).work
    grad = [gradient_ops(n, OPTS, OPTS, chunks).work for n in (1024, 1025)]
    assert grad[1] == grad[0] + 2 and grad[1] <= 1.05 * grad[0]
    assert layouts[1].extra_work_per_chunk == 0 and layouts[1].last_rows == layouts[1].last_real + 1
    # the model's predictions (``lpt-model predict``) take the same layout
    assert [layout_for(n, OPTS, chunks).tail for n in (1024, 1025)] == [0, 1]
    assert cycle_ops(layout_for(1025, OPTS, chunks), OPTS).work == cycle_ops(layout_for(1024, OPTS, chunks), OPTS).work


def test_the_stored_chunks_hold_the_tail_after_the_last_chunks_layers():
    """N = 37 on 2 chunks (cfactor 4: 32 by MGRIT, a tail of 5): chunks of 16 and 16 + 5 rows; spread, unspread
    and stored_chunk keep every layer once, in order."""
    layout = paired_layouts(37, OPTS, OPTS, 2, tail=True)[0]
    assert (layout.n, layout.tail, layout.stride, layout.n_local, layout.rows) == (32, 5, 16, 16, 21)
    stack = jnp.arange(37.0)
    stored = spread(stack, layout)
    np.testing.assert_array_equal(unspread(stored, layout), stack)
    np.testing.assert_array_equal(stored_chunk(stack, 1, layout), jnp.arange(16.0, 37.0))
    np.testing.assert_array_equal(stored_chunk(stack, 0, layout), jnp.concatenate([jnp.arange(16.0), jnp.zeros(5)]))


def _problem(depth: int):
    model = ResNet(input_shape=(2,), num_outputs=3, depth=depth, width=4, T=5.0, gamma_tik=1e-3, gamma_ddt=1e-3)
    params = model.init(jax.random.PRNGKey(0), F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 2), F64, -3.0, 3.0)
    return model, params, x, jnp.arange(5) % 3


def _gradient(solver: MGRITSolver, chunks: int, model, params, x, y):
    """(objective, gradient) of the solver on ``chunks`` mesh chunks (the gradient gathered)."""
    grid = ProcessorGrid("mesh", layers=chunks)
    solver = dataclasses.replace(solver, comm=grid.comm())

    def local(params, x, y):
        return solver.value_and_grad(model, params, x, y, ())[:3:2]

    return jax.jit(on_mesh(local, grid, (REPLICATED,) * 3, (REPLICATED, REPLICATED)))(params, x, y)


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize("depth", [17, 37])
def test_converged_gradient_with_a_tail_is_the_serial_networks(depth):
    """Converged forward and adjoint MGRIT (40 cycles, tolerance 1e-14) with the tail (17 = 16 + 1, 37 = 32 + 5)
    on 1 and 2 chunks: objective and gradient equal ``jax.grad`` of the serial network to 1e-10, every layer's
    gradient (the tail's too) in its place."""
    model, params, x, y = _problem(depth)
    opts = dataclasses.replace(OPTS, max_iter=40, abs_tol=1e-14)
    solver = MGRITSolver(fwd=opts, bwd=opts, warm_start=False, on_divergence="error")
    assert solver.layouts(depth)[0].tail == {17: 1, 37: 5}[depth]
    ref_obj, _, ref = SerialSolver().value_and_grad(model, params, x, y, ())[:3]
    for chunks in (1, 2):
        obj, grads = _gradient(solver, chunks, model, params, x, y)
        assert abs(float(obj) - float(ref_obj)) <= 1e-12 * abs(float(ref_obj))
        assert jax.tree_util.tree_leaves(grads["layers"])[0].shape[0] == depth
        for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(want))) + 1e-14)


@pytest.mark.slow(seconds=30)
def test_every_grid_gives_the_iterates_of_one_chunk_with_a_tail():
    """Two forward and one adjoint cycle (not converged: the iterates depend on the problem MGRIT solves) of
    N = 65 = 64 + 1 on 1, 2 and 4 chunks: objective and gradient equal to 1e-12 in float64; the one-chunk objective
    differs from the serial network's (not converged), and without the tail 65 would need 3 identity steps."""
    model, params, x, y = _problem(65)
    fwd, bwd = dataclasses.replace(OPTS, max_iter=2), dataclasses.replace(OPTS, max_iter=1)
    solver = MGRITSolver(fwd=fwd, bwd=bwd, warm_start=False, on_divergence="error")
    one_obj, one = _gradient(solver, 1, model, params, x, y)
    ref_obj = SerialSolver().value_and_grad(model, params, x, y, ())[0]
    assert abs(float(one_obj) - float(ref_obj)) > 1e-10 * abs(float(ref_obj))  # not converged
    for chunks in (2, 4):
        obj, grads = _gradient(solver, chunks, model, params, x, y)
        assert abs(float(obj) - float(one_obj)) <= 1e-12 * abs(float(one_obj))
        for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(one)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want))) + 1e-15)
    assert make_layout(65, fwd).n_pad == 68  # without the tail: 3 identity steps


def test_too_many_chunks_for_the_mgrit_part_names_the_depth():
    """N = 9 on 4 chunks (cfactor 4: 8 by MGRIT and 1 serially, 2 coarse intervals): one line naming both."""
    with pytest.raises(ValueError, match=r"^parallel.layers=4 is more than the finest MGRIT level allows: depth 9 "
                                         r"\(8 by MGRIT, 1 serially\) with solver.cfactor=4 gives 2 coarse "
                                         r"intervals \(max_levels=6\); use at most 2 layer ranks, or a greater depth$"):
        paired_layouts(9, OPTS, OPTS, 4, tail=True)
