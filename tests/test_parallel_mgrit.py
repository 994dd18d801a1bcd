"""The layer-parallel solver gives the same iterates on every processor grid (DESIGN §4).

MGRIT with a fixed number of cycles on the `mesh` back-end (4 emulated devices, grids 1×4, 2×2, 4×1; fewer for
the uneven and conv cases) vs the `single` back-end: forward states, objective and gradient within 1e-12 relative
(float64), for N = 64 and an uneven N = 70 (dense layers), and conv layers (N = 100). On uneven chunks the last
chunk holds the rest of the layers (N = 70 on 4 chunks: 16 + 16 + 16 + 22), and the iterates at the real layers
are the same.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, MGRITSolver
from lpt.model import ResNet
from lpt.parallel import ProcessorGrid
from lpt.parallel.sharded import REPLICATED, SAMPLES, chunk_states, on_mesh

F64 = jnp.float64


def problem(depth: int, layer: str, init: bool = True):
    """(model, parameters, inputs, labels); with ``init=False`` the model only (the rest None: nothing drawn)."""
    if layer == "conv":
        model = ResNet(input_shape=(5, 5, 2), num_outputs=3, depth=depth, width=2, T=2.0, layer="conv",
                       opening="conv", gamma_tik=1e-3, gamma_ddt=1e-4)
    else:
        model = ResNet(input_shape=(2,), num_outputs=5, depth=depth, width=8, T=5.0, gamma_tik=1e-3, gamma_ddt=1e-4)
    if not init:
        return model, None, None, None
    if layer == "conv":
        x = jax.random.normal(jax.random.PRNGKey(1), (8, 5, 5, 2), F64)
    else:
        x = jax.random.uniform(jax.random.PRNGKey(1), (8, 2), F64, -3.0, 3.0)
    return model, model.init(jax.random.PRNGKey(0), F64), x, jnp.arange(8) % model.num_outputs


def solver_for(comm=None, cycles=(2, 2)):
    kw = dict(cfactor=4, max_levels=4, nrelax=1)
    extra = {} if comm is None else {"comm": comm}
    return MGRITSolver(fwd=MGRITOptions(max_iter=cycles[0], **kw), bwd=MGRITOptions(max_iter=cycles[1], **kw),
                       warm_start=True, on_divergence="error", **extra)


def global_states(local: jnp.ndarray, layers: int, depth: int, stride: int) -> jnp.ndarray:
    """(layers·(n_local+1), …) chunk states with halos → (depth+1, …) global states: chunk p holds points
    p·stride … (p+1)·stride (the last chunk the rest), then dead points."""
    blocks = local.reshape(layers, -1, *local.shape[1:])
    owned = [blocks[p, 1: 1 + stride] for p in range(layers - 1)] + [blocks[-1, 1:]]
    return jnp.concatenate([blocks[0, :1], *owned])[: depth + 1]


def warm_steps(solver, model, params, x, y, steps: int):
    """``steps`` one-shot gradients, from the second on warm-started from the last one's states, in one loop (the
    solve compiled once): the last step's (objective, gradient, solver state, stats)."""
    def step(state):
        obj, _, grads, state, stats = solver.value_and_grad(model, params, x, y, state)
        return obj, grads, state, stats

    state = solver.init_state(model, params, x)
    if steps == 1:
        return step(state)
    start = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(step, state))
    return jax.lax.fori_loop(0, steps, lambda _, out: step(out[2]), (*start[:2], state, start[3]))


def run_mesh(grid: ProcessorGrid, model, params, x, y, steps: int):
    solver = solver_for(grid.comm())

    def local(params, x, y):
        obj, grads, state, stats = warm_steps(solver, model, params, x, y, steps)
        mean = lambda t: jax.tree_util.tree_map(lambda a: solver.comm.data_sum(a) / grid.data, t)  # noqa: E731
        return mean(obj), mean(grads), state.ys, state.ybars, stats

    states = chunk_states(model.state_batch_axis)
    fn = on_mesh(local, grid, (REPLICATED, SAMPLES, SAMPLES), (REPLICATED, REPLICATED, states, states, REPLICATED))
    obj, grads, ys, ybars, stats = jax.jit(fn)(params, x, y)
    depth, stride = model.depth, solver.layouts(model.depth)[0].stride
    return (obj, grads, global_states(ys, grid.layers, depth, stride), global_states(ybars, grid.layers, depth, stride),
            stats)


def run_single(model, params, x, y, steps: int):
    solver = solver_for()

    def local(params, x, y):  # one compiled program, as on the mesh (op by op, it compiles hundreds)
        obj, grads, state, stats = warm_steps(solver, model, params, x, y, steps)
        return obj, grads, state.ys[: model.depth + 1], state.ybars[: model.depth + 1], stats

    return jax.jit(local)(params, x, y)


@jax.jit
def _rel(a, b) -> jnp.ndarray:
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = sum(jnp.sum((u - v) ** 2) for u, v in zip(a, b))
    return jnp.sqrt(num / sum(jnp.sum(v**2) for v in b))


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ over all leaves of two trees (one compiled program per tree structure, not one per leaf and
    operation)."""
    return float(_rel(a, b))


ALL_GRIDS = ((1, 4), (2, 2), (4, 1))


@pytest.mark.slow(seconds=40)
# even chunks (N = 64) on every grid of 4 devices; uneven chunks with a warm-started second step (N = 70: chunks of
# 16 + 16 + 16 + 22 layers, and 32 + 38 with data ranks, dead steps on the shorter ones); conv layers on uneven
# chunks with data ranks (the layer kind is independent of the chunk layout and the grid: conv on N = 64 or on
# another grid would run no further code; each grid is one more compilation of the whole solve)
@pytest.mark.parametrize("layer,depth,steps,grids", [("dense", 64, 1, ALL_GRIDS), ("dense", 70, 2, ((1, 4), (2, 2))),
                                                     ("conv", 100, 1, ((2, 2),))],
                         ids=["dense-64-all-grids", "dense-70-2-steps", "conv-100"])
def test_mesh_iterates_equal_single(layer, depth, steps, grids):
    model, params, x, y = problem(depth, layer)
    ref = run_single(model, params, x, y, steps)
    assert float(ref[4]["fwd_residual"][-1]) > 1e-6  # not trivially converged: iterates far from serial
    for data, layers in grids:
        got = run_mesh(ProcessorGrid("mesh", data=data, layers=layers), model, params, x, y, steps)
        where = f"grid {data}×{layers}"
        assert abs(float(got[0]) - float(ref[0])) <= 1e-12 * abs(float(ref[0])), where
        assert rel(got[1], ref[1]) < 1e-12, f"gradient, {where}"
        assert rel(got[2], ref[2]) < 1e-12, f"forward states, {where}"
        # each data rank differentiates the mean loss of its own samples: ȳ is `data` times larger
        assert rel(got[3] / data, ref[3]) < 1e-12, f"adjoint states, {where}"
        for key in ("fwd_residual", "bwd_residual"):
            np.testing.assert_allclose(got[4][key] / (data if key == "bwd_residual" else 1), ref[4][key],
                                       rtol=1e-10, err_msg=where)


def test_too_many_layer_ranks_is_refused_before_work():
    model, params, x, y = problem(16, "dense")
    with pytest.raises(ValueError, match=r"parallel.layers=8 is more than the finest MGRIT level allows"):
        solver_for(ProcessorGrid("mesh", layers=8).comm()).layouts(model.depth)


ADAPTIVE = {"control": "adaptive", "cfactor": 4, "max_levels": 4, "control_every": 2, "control_min_cos": 0.999999999,
            "fwd_iters": 1, "bwd_iters": 1, "control_tol": 0.5, "on_divergence": "error"}


def adaptive_steps(solver, model, params, x, y, mean):
    """Three training-step gradients with the solver's statistics, in one loop (the solve compiled once): the
    gradients, forward and adjoint cycles, modes and bias-check cosines, each stacked over the steps."""
    def step(state, _):
        _, _, grads, state, stats = solver.value_and_grad(model, params, x, y, state)
        return state, (mean(grads), stats["fwd_cycles"], stats["bwd_cycles"], stats["mode"], stats["grad_cos"])

    return jax.lax.scan(step, solver.init_state(model, params, x), length=3)[1]


def each_step(stacked) -> list:
    """The stacked outputs of :func:`adaptive_steps` step by step (on the host)."""
    stacked = jax.device_get(stacked)
    return [jax.tree_util.tree_map(lambda a: a[i], stacked) for i in range(3)]


@pytest.fixture(scope="module")
def adaptive_reference():
    """The problem and the one-device reference of the adaptive-control test (the same for every grid)."""
    model, params, x, y = problem(64, "dense")
    single = MGRITSolver.from_config(ADAPTIVE, full_batch=True)
    ref = each_step(jax.jit(lambda p, x, y: adaptive_steps(single, model, p, x, y, lambda t: t))(params, x, y))
    return model, params, x, y, single, ref


@pytest.mark.slow(seconds=23)
@pytest.mark.parametrize("data,layers", [(1, 2), (2, 2)])
def test_adaptive_control_decides_alike_on_every_grid(adaptive_reference, data, layers):
    """The adaptive control on the mesh: the same cycles, bias-check cosines, modes and gradients as on one
    device (a threshold no one-shot gradient meets forces a tightening at the check of step 2)."""
    model, params, x, y, single, ref = adaptive_reference
    grid = ProcessorGrid("mesh", data=data, layers=layers)
    mesh = dataclasses.replace(single, comm=grid.comm())
    mean = lambda t: jax.tree_util.tree_map(lambda a: mesh.comm.data_sum(a) / data, t)  # noqa: E731
    fn = on_mesh(lambda p, x, y: adaptive_steps(mesh, model, p, x, y, mean), grid, (REPLICATED, SAMPLES, SAMPLES),
                 REPLICATED)
    got = each_step(jax.jit(fn)(params, x, y))
    assert [int(r[3]) for r in ref] == [0, 0, 1]
    for (g, fc, bc, mode, cos), (g_ref, fc_ref, bc_ref, mode_ref, cos_ref) in zip(got, ref):
        assert (int(fc), int(bc), int(mode)) == (int(fc_ref), int(bc_ref), int(mode_ref))
        assert rel(g, g_ref) < 1e-12
        assert (np.isnan(float(cos)) and np.isnan(float(cos_ref))) or abs(float(cos) - float(cos_ref)) < 1e-6
