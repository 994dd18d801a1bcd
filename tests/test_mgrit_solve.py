"""FAS-MGRIT forward and adjoint solves: serial parity, exactness, convergence to serial, cycle types."""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, coarse_initial_guess, level_shapes, mgrit_propagate, mgrit_solve
from lpt.model import ResNet, propagate, propagate_states

F64 = jnp.float64


def make_problem(depth: int, layer: str = "dense", T: float = 5.0, batch: int = 4):
    """A random ResNet (float64), its parameters, inputs and integer labels."""
    if layer == "conv":
        model = ResNet(input_shape=(6, 6, 2), num_outputs=3, depth=depth, width=2, T=T, layer="conv",
                       opening="conv")
    else:
        model = ResNet(input_shape=(2,), num_outputs=3, depth=depth, width=8, T=T)
    params = model.init(jax.random.PRNGKey(depth), F64)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *model.input_shape), F64)
    labels = jnp.arange(batch) % model.num_outputs
    return model, params, x, labels


def loss_fn(model, labels, x, propagate_fn):
    """params ↦ (data loss + regularisation, y_N), layers propagated by ``propagate_fn(θ, hs, y0)``."""

    def loss(params):
        y0 = model.open(params, x)
        y_final = propagate_fn(params["layers"], model.step_sizes(y0.dtype), y0)
        return model.data_loss(model.head(params, y_final), labels) + model.regularization(params), y_final

    return loss


def serial_grad(model, params, x, labels):
    """(y_N, gradient) of the serial network by jax.grad."""
    prop = lambda th, hs, y0: propagate(model.step, th, hs, y0)  # noqa: E731
    grads, y_final = jax.jit(jax.grad(loss_fn(model, labels, x, prop), has_aux=True))(params)
    return y_final, grads


def mgrit_grad(model, params, x, labels, fwd: MGRITOptions, bwd: MGRITOptions):
    """(y_N, gradient) through mgrit_propagate: forward MGRIT, adjoint MGRIT under jax.grad."""
    prop = lambda th, hs, y0: mgrit_propagate(model.step, th, hs, y0, fwd, bwd)  # noqa: E731
    grads, y_final = jax.jit(jax.grad(loss_fn(model, labels, x, prop), has_aux=True))(params)
    return y_final, grads


def rel_err(a, b) -> float:
    fa = jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(a)])
    fb = jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(b)])
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def fine_problem(model, params, x):
    y0 = model.open(params, x)
    return params["layers"], model.step_sizes(y0.dtype), y0


# --- one level = serial -------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_one_level_is_serial_bit_for_bit(layer):
    model, params, x, labels = make_problem(12, layer)
    theta, hs, y0 = fine_problem(model, params, x)
    one = MGRITOptions(max_levels=1)
    u, stats = mgrit_solve(model.step, theta, hs, y0, one)
    np.testing.assert_array_equal(u, propagate_states(model.step, theta, hs, y0))
    assert int(stats.iterations) == 1 and float(stats.residuals[0]) == 0.0

    _, g_mgrit = mgrit_grad(model, params, x, labels, one, one)
    _, g_serial = serial_grad(model, params, x, labels)
    if layer == "dense":
        jax.tree_util.tree_map(np.testing.assert_array_equal, g_mgrit, g_serial)
    else:
        # The vmapped layer gradient sums the conv bias cotangent over (B, H, W) in another order than the
        # per-step sum inside jax.grad's reverse scan: equal up to that summation's round-off.
        assert rel_err(g_mgrit, g_serial) < 1e-15
        jax.tree_util.tree_map(np.testing.assert_array_equal, g_mgrit["opening"], g_serial["opening"])
        np.testing.assert_array_equal(g_mgrit["layers"]["K"], g_serial["layers"]["K"])


# --- two-level exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [16, 14])
def test_two_level_f_relaxation_exact_after_n_coarse_cycles(depth):
    """Two-level MGRIT with F-relaxation reproduces the serial solution after as many cycles as there are
    C-points in (0, N] (Falgout et al. 2014, §3: cycle k makes C-point k exact), and not before. N = 16:
    n_c = 4 cycles; uneven N = 14 (padded to 16 by identity steps): C-points 4, 8, 12, so 3 cycles."""
    model, params, x, _ = make_problem(depth)
    theta, hs, y0 = fine_problem(model, params, x)
    opts = MGRITOptions(cfactor=4, max_levels=2, min_coarse=1, nrelax=0, max_iter=1)
    assert level_shapes(depth, opts)[1].n == 4
    n_exact = depth // 4
    ref = propagate_states(model.step, theta, hs, y0)
    u = coarse_initial_guess(model.step, theta, hs, y0, opts)
    errors = []
    for _ in range(n_exact):  # one cycle per call; each call starts from the previous iterate
        u, _ = mgrit_solve(model.step, theta, hs, y0, opts, u)
        errors.append(float(jnp.max(jnp.abs(u - ref)) / jnp.max(jnp.abs(ref))))
    assert errors[-1] < 1e-14, errors
    assert errors[-2] > 1e-6, errors


# --- converged MGRIT = serial, states and gradients --------------------------------------------------
CONVERGED_CASES = [
    # layer, depth, cfactor, levels, nrelax
    ("dense", 8, 2, 3, 0),
    ("dense", 64, 4, 3, 1),
    ("dense", 100, 4, 4, 1),
    ("dense", 1000, 4, 4, 1),
    ("dense", 1000, 2, 4, 0),
    ("conv", 64, 2, 4, 1),
    ("conv", 100, 4, 3, 0),
]


def assert_converged_parity(model, params, x, labels, opts):
    """Final state within 1e-10 and gradient within 1e-8 (relative) of the serial network's."""
    y_final, grads = mgrit_grad(model, params, x, labels, opts, opts)
    y_ref, g_ref = serial_grad(model, params, x, labels)
    assert float(jnp.linalg.norm(y_final - y_ref) / jnp.linalg.norm(y_ref)) < 1e-10
    err = rel_err(grads, g_ref)
    assert err < 1e-8, err


@pytest.mark.slow(seconds=9)
@pytest.mark.parametrize("layer,depth,cfactor,levels,nrelax", CONVERGED_CASES)
def test_converged_mgrit_matches_serial(layer, depth, cfactor, levels, nrelax):
    model, params, x, labels = make_problem(depth, layer)
    opts = MGRITOptions(cfactor=cfactor, max_levels=levels, nrelax=nrelax, max_iter=60, abs_tol=1e-12)
    assert len(level_shapes(depth, opts)) == levels
    assert_converged_parity(model, params, x, labels, opts)


@pytest.mark.slow(seconds=8)
def test_average_restriction_and_per_level_cfactor_converge_to_serial():
    model, params, x, labels = make_problem(96)
    opts = MGRITOptions(cfactor=(2, 4), max_levels=4, restrict="average", nrelax_fine=0, nrelax=1,
                        max_iter=60, abs_tol=1e-12)
    assert [s.n for s in level_shapes(96, opts)] == [96, 48, 12, 3]
    assert_converged_parity(model, params, x, labels, opts)


def test_tolerance_stops_early_and_pads_with_nan():
    model, params, x, _ = make_problem(64)
    theta, hs, y0 = fine_problem(model, params, x)
    opts = MGRITOptions(cfactor=4, max_levels=3, max_iter=40, rel_tol=1e-6)
    _, stats = mgrit_solve(model.step, theta, hs, y0, opts)
    k = int(stats.iterations)
    res = np.asarray(stats.residuals)
    assert 1 < k < 40 and np.all(np.isfinite(res[:k])) and np.all(np.isnan(res[k:]))
    assert res[k - 1] <= 1e-6 * float(stats.initial_residual) < res[k - 2]


def test_growth_cycles_run_while_the_residual_is_above_its_start():
    """A warm start from the states of other weights (θ + 0.1·noise): with one cycle the residual ends above the
    F-relaxed start ‖r_0‖; ``growth_iter`` adds cycles while ‖r_k‖ > ‖r_0‖, at most ``growth_iter`` more, and
    gives the iterates of the plain solve with as many cycles."""
    model, params, x, _ = make_problem(32)
    theta, hs, y0 = fine_problem(model, params, x)
    keys = iter(jax.random.split(jax.random.PRNGKey(7), 10))
    other = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(next(keys), a.shape, a.dtype), theta)
    warm = propagate_states(model.step, other, hs, y0)
    plain = MGRITOptions(cfactor=4, max_levels=3, max_iter=1, nrelax_fine=0)

    def solve(opts):
        u, stats = mgrit_solve(model.step, theta, hs, y0, opts, warm)
        return u, np.asarray(stats.residuals), float(stats.initial_residual), int(stats.iterations)

    _, res, r0, k = solve(plain)
    assert k == 1 and res[0] > r0  # the case the option is for
    u, res, r0, k = solve(dataclasses.replace(plain, growth_iter=4))
    assert res.shape == (5,) and k == 3, (res, r0)
    assert np.all(res[: k - 1] > r0) and res[k - 1] <= r0 and np.all(np.isnan(res[k:]))
    np.testing.assert_array_equal(u, solve(dataclasses.replace(plain, max_iter=3))[0])
    # at most growth_iter more: one more cycle, still above the start
    _, res, r0, k = solve(dataclasses.replace(plain, growth_iter=1))
    assert k == 2 and res[1] > r0
    # with a tolerance the tolerance decides (no growth cycles)
    _, res, _, k = solve(dataclasses.replace(plain, growth_iter=4, abs_tol=1e-30))
    assert res.shape == (1,) and k == 1


def test_growth_cycles_add_no_second_copy_of_the_cycle_to_the_program():
    """The cycles and the growth cycles are one loop: a solve with growth cycles traces the cycle once, so its
    program (equations of the jaxpr, loop bodies included) is about the size of the plain one. With a second
    loop for the growth cycles it held the cycle twice, which every training step with the default one-shot
    settings compiled."""
    model, params, x, _ = make_problem(32)
    theta, hs, y0 = fine_problem(model, params, x)
    warm = propagate_states(model.step, theta, hs, y0)
    plain = MGRITOptions(cfactor=4, max_levels=3, max_iter=3, nrelax_fine=0)

    def size(opts) -> int:
        def count(jaxpr) -> int:
            subs = [p for e in jaxpr.eqns for v in e.params.values() for p in (v if isinstance(v, tuple) else (v,))]
            return len(jaxpr.eqns) + sum(count(p.jaxpr if hasattr(p, "consts") else p) for p in subs
                                         if hasattr(p, "eqns") or hasattr(p, "consts"))
        return count(jax.make_jaxpr(lambda t, w: mgrit_solve(model.step, t, hs, y0, opts, w))(theta, warm).jaxpr)

    plain_size, growth_size = size(plain), size(dataclasses.replace(plain, growth_iter=2))
    assert growth_size < plain_size + 20, (plain_size, growth_size)  # 349 / 345 here; 588 with two loops


# --- cycle types ----------------------------------------------------------------------------------------
@pytest.mark.slow(seconds=17)
def test_f_cycle_and_fmg_at_least_as_fast_as_v_and_same_answer():
    """Residual after each of the first 8 cycles: F-cycle ≤ V-cycle; FMG (nested-iteration start, then
    V-cycles) ≤ 1.1 × V (its gain is the better start, its cycles are V-cycles). All reach the serial states."""
    model, params, x, _ = make_problem(256)
    theta, hs, y0 = fine_problem(model, params, x)
    ref = propagate_states(model.step, theta, hs, y0)
    res = {}
    for cycle in ("V", "F", "FMG"):
        opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, cycle=cycle, max_iter=30, abs_tol=1e-11)
        u, stats = mgrit_solve(model.step, theta, hs, y0, opts)
        res[cycle] = np.asarray(stats.residuals)[:8]
        np.testing.assert_allclose(u, ref, rtol=0, atol=1e-9)
    print("residuals per cycle:", {k: np.array2string(v, precision=2) for k, v in res.items()})
    assert np.all(res["F"] <= res["V"])
    assert np.all(res["FMG"] <= 1.1 * res["V"])
    assert res["FMG"][0] < res["V"][0]


def test_second_call_does_not_recompile():
    model, params, x, _ = make_problem(16)
    theta, hs, y0 = fine_problem(model, params, x)
    opts = MGRITOptions(cfactor=2, max_levels=3, max_iter=1)
    mgrit_solve(model.step, theta, hs, y0, opts)
    size = mgrit_solve._cache_size()
    mgrit_solve(model.step, jax.tree_util.tree_map(lambda a: a + 1.0, theta), hs, 2.0 * y0, opts)
    assert mgrit_solve._cache_size() == size


def test_f_relaxation_reads_the_per_step_data_in_place():
    """The F-sweep's scan indexes each step's data where it lies: no copy of data[:-1] (for the adjoint, the
    linearisations of all steps) in the compiled sweep, whose F-points and ĉ equal the steps applied one by one."""
    from lpt.mgrit.hierarchy import Level
    from lpt.mgrit.relax import f_sweep

    m, n_c = 4, 6
    step = lambda w, y, h: y + h * jnp.tanh(y @ w[:3] + w[3:].sum(axis=0))  # noqa: E731  data (7, 3), states (3, 3)
    w = jax.random.normal(jax.random.PRNGKey(0), (m, n_c, 7, 3))
    hs = jnp.full((m, n_c), 0.1)
    c = jax.random.normal(jax.random.PRNGKey(1), (n_c + 1, 3, 3))
    fn = jax.jit(lambda w, hs, c: f_sweep(step, Level(w, hs), c, None))
    shapes = fn.lower(w, hs, c).compile().as_text().replace("f64[", "[").replace("f32[", "[")
    assert f"[{m},{n_c},7,3]" in shapes  # the data itself: the pattern below would find a copy
    assert f"[{m - 1},{n_c},7,3]" not in shapes, "data[:-1] copied"
    grid, chat = fn(w, hs, c)
    for j in range(n_c):
        y = c[j]
        for k in range(m):
            y = step(w[k, j], y, hs[k, j])
            if k < m - 1:
                np.testing.assert_allclose(grid.f[k, j], y, rtol=1e-12)
        np.testing.assert_allclose(chat[j], y, rtol=1e-12)
