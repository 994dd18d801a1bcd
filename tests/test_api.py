"""The public API ``lpt.layer_parallel``: a layer-parallel ``lax.scan`` over layers with pytree parameters and a
pytree state. Converged solves give y_N and ``jax.grad`` of the scan to 1e-10 (float64) on one device, a 2×2 mesh
and 2 MPI ranks; the one-shot warm start threads through a user's optax loop and its gradients approach the exact
one; float32 stays float32; bad options get one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lpt
from lpt.mgrit import MGRITOptions

F64 = jnp.float64
HERE = Path(__file__).resolve().parent
T = 2.0


def problem(n: int, dtype=F64, batch: int = 4):
    """A small network with pytree parameters {"W": (N, 4, 4), "c": (N, 2, 3)} and a pytree state (a: (B, 4),
    b: (B, 2, 3)) coupled through the layers; MGRIT with m = 2 (N = 13: levels 13, 7, 4, 2)."""
    def f(theta, y):
        a, b = y
        return jnp.tanh(a @ theta["W"]), jnp.tanh(b * theta["c"] + a[:, :1, None])

    keys = jax.random.split(jax.random.PRNGKey(n), 4)
    params = {"W": jax.random.normal(keys[0], (n, 4, 4), dtype), "c": jax.random.normal(keys[1], (n, 2, 3), dtype)}
    y0 = (jax.random.normal(keys[2], (batch, 4), dtype), jax.random.normal(keys[3], (batch, 2, 3), dtype))
    solve = MGRITOptions(cfactor=2, max_iter=30)
    return lpt.residual(f), params, y0, lpt.LayerParallelOptions(T=T, forward=solve, backward=solve)


def scan_loss(lp, step=None, T: float = T):
    """(params, y0) ↦ Σ_leaves Σ sin(y_N), y_N by ``lp`` or (``lp`` None) by the ``lax.scan`` of ``step``."""
    def final(params, y0):
        if lp is not None:
            return lp(params, y0)
        n = jax.tree_util.tree_leaves(params)[0].shape[0]
        hs = jnp.full((n,), T / n, jax.tree_util.tree_leaves(y0)[0].dtype)
        return jax.lax.scan(lambda y, th_h: (step(*th_h[:1], y, th_h[1]), None), y0, (params, hs))[0]

    return lambda params, y0: sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(final(params, y0)))


def rel_err(a, b) -> float:
    fa = jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(a)])
    fb = jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(b)])
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def reference(step, params, y0):
    """(y_N, loss, (∂/∂params, ∂/∂y0)) of the serial scan by jax.grad."""
    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    hs = jnp.full((n,), T / n, jax.tree_util.tree_leaves(y0)[0].dtype)
    y_final = jax.lax.scan(lambda y, th_h: (step(th_h[0], y, th_h[1]), None), y0, (params, hs))[0]
    value, grads = jax.jit(jax.value_and_grad(scan_loss(None, step), argnums=(0, 1)))(params, y0)
    return y_final, value, grads


def check_parity(lp, step, params, y0, tol: float) -> None:
    y_ref, value_ref, grads_ref = reference(step, params, y0)
    assert rel_err(lp(params, y0), y_ref) < tol
    value, grads = jax.jit(jax.value_and_grad(scan_loss(lp), argnums=(0, 1)))(params, y0)
    assert abs(float(value - value_ref)) <= tol * abs(float(value_ref))
    assert rel_err(grads, grads_ref) < tol, rel_err(grads, grads_ref)


# --- converged parity ---------------------------------------------------------------------------------------------
@pytest.mark.slow(seconds=45)
@pytest.mark.parametrize("depth", [13, 16, 17])
def test_converged_gradient_equals_grad_of_scan(depth):
    """Pytree params and state; N = 13 (no multiple of the coarsening: padded), 16 and 17 (16 by MGRIT and a serial
    tail of 1, :func:`lpt.mgrit.layout.serial_tail`): y_N, loss, the gradient with respect to the parameters and
    the initial state, and all states equal the scan's to 1e-10 (float64)."""
    step, params, y0, opts = problem(depth)
    lp = lpt.layer_parallel(step, opts)
    assert lp._solver(params, y0)[1].layouts[0].tail == (1 if depth == 17 else 0)
    lp.check_identity(params, y0)
    check_parity(lp, step, params, y0, 1e-10)
    states, stats = lp.states(params, y0)
    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    hs = jnp.full((n,), T / n, F64)
    ref = jax.lax.scan(lambda y, th_h: (step(th_h[0], y, th_h[1]),) * 2, y0, (params, hs))[1]
    assert [s.shape for s in states] == [(depth + 1, *a.shape) for a in y0]
    assert rel_err([s[1:] for s in states], ref) < 1e-10 and 1 < int(stats.iterations) < 30


@pytest.mark.slow(seconds=30)
def test_inside_user_jit_grad_and_optax_step():
    """Three adam steps of a user's jitted train step through ``lp`` follow the same steps through the scan."""
    step, params, y0, opts = problem(13)
    lp, opt = lpt.layer_parallel(step, opts), optax.adam(1e-2)

    def trainer(loss):
        @jax.jit
        def train_step(params, opt_state):
            value, grads = jax.value_and_grad(loss)(params, y0)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        return train_step

    runs = []
    for loss in (scan_loss(lp), scan_loss(None, step)):
        p, state, values, train_step = params, opt.init(params), [], trainer(loss)
        for _ in range(3):
            p, state, value = train_step(p, state)
            values.append(float(value))
        runs.append((p, values))
    assert rel_err(runs[0][0], runs[1][0]) < 1e-10
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-10)


@pytest.mark.slow(seconds=40)
def test_one_shot_warm_start_threads_through_optax_steps():
    """With fixed parameters the warm-started one-shot gradients (1 forward, 1 adjoint cycle per step) approach the
    exact gradient step by step — exact after 5 steps, as many cycles as make every coarse point of this hierarchy
    exact (levels 13, 7, 4, 2) — while a cold start stays as far; over optax steps the warm start is threaded as
    explicit state (``jax.grad`` with respect to it returns the next one) and one compilation serves every step."""
    step, params, y0, opts = problem(13)
    lp = lpt.layer_parallel(step, dataclasses.replace(opts, one_shot_cycles=(1, 1)))
    exact = reference(step, params, y0)[2][0]

    def loss(p, warm):
        return scan_loss(lambda p_, y: lp.one_shot(p_, y, warm))(p, y0)

    grad_step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    warm, errors = lp.init_warm(params, y0), []
    for _ in range(5):
        grads, warm = grad_step(params, warm)
        errors.append(rel_err(grads, exact))
    cold = rel_err(jax.jit(jax.grad(loss))(params, None), exact)
    assert float(warm.valid) == 1.0 and errors[0] == pytest.approx(cold, rel=1e-12) and cold > 0.05
    # measured: 0.14, 0.019, 0.0053, 1.8e-4, 1.6e-16
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-12, errors

    opt = optax.sgd(1e-2)

    @jax.jit
    def train_step(p, opt_state, warm):
        grads, warm = jax.grad(loss, argnums=(0, 1))(p, warm)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, warm

    p, state, warm = params, opt.init(params), lp.init_warm(params, y0)
    for _ in range(4):
        p, state, warm = train_step(p, state, warm)
    assert train_step._cache_size() == 1 and float(warm.valid) == 1.0
    exact_p, exact_grad = params, jax.jit(jax.grad(scan_loss(None, step)))
    for _ in range(4):
        exact_p = jax.tree_util.tree_map(lambda a, g: a - 1e-2 * g, exact_p, exact_grad(exact_p, y0))
    assert 0 < rel_err(p, exact_p) < 1e-3  # measured 2.5e-4: the first steps start from the coarse guess


@pytest.mark.slow(seconds=20)
def test_float32_stays_float32():
    """In float32 the default tolerance is 100·ε(float32): y_N and the gradient in float32, within 1e-5 of the
    float32 scan's."""
    step, params, y0, opts = problem(13, jnp.float32)
    lp = lpt.layer_parallel(step, opts)
    y_final = lp(params, y0)
    grads = jax.jit(jax.grad(scan_loss(lp), argnums=(0, 1)))(params, y0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves((y_final, grads)))
    y_ref, _, grads_ref = reference(step, params, y0)
    assert rel_err(y_final, y_ref) < 1e-5 and rel_err(grads, grads_ref) < 1e-5  # measured 8e-8 and 1.8e-7


# --- back-ends ----------------------------------------------------------------------------------------------------
@pytest.mark.slow(seconds=27)
@pytest.mark.parametrize("batch_axis, depth", [(0, 13), (None, 17)])
def test_mesh_2x2_equals_grad_of_scan(batch_axis, depth):
    """A ("data", "layers") = 2×2 mesh of emulated devices (tests/conftest.py: 8): layers in 2 chunks under
    shard_map, samples split over "data" (batch_axis 0) or the state replicated (None); N = 13 (padded) and 17 (a
    serial tail of 1 after 16); 1e-10 (float64)."""
    step, params, y0, opts = problem(depth)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "layers"))
    lp = lpt.layer_parallel(step, lpt.LayerParallelOptions(T=T, forward=opts.forward, backward=opts.backward,
                                                           mesh=mesh, batch_axis=batch_axis))
    check_parity(lp, step, params, y0, 1e-10)
    chunks = 2 * (lp._solver(params, y0)[1].layouts[0].n_local + 1)
    assert lp.init_warm(params, y0).ys.shape == ((chunks, 4, 10) if batch_axis == 0 else (chunks, 40))


@pytest.mark.slow(seconds=100)
def test_mpirun_2_ranks_equals_grad_of_scan():
    """2 MPI ranks (one layer chunk each, the whole parameters on each): every rank's y_N-loss and gradient equal
    the scan's to 1e-10 (tests/mpi/api_check.py)."""
    from test_parallel_comm import mpirun

    proc = mpirun(2, HERE / "mpi" / "api_check.py", "2", timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok") == 2, proc.stdout[-2000:]


# --- contract and options -----------------------------------------------------------------------------------------
def test_identity_contract_is_checked():
    step, params, y0, _ = problem(4)
    lpt.layer_parallel(step).check_identity(params, y0)
    bad = lpt.layer_parallel(lambda theta, y, h: jax.tree_util.tree_map(lambda a: a + 1 + h, y))
    with pytest.raises(ValueError, match=r"step\(θ_0, y0, 0\) must equal y0 exactly .* lpt\.residual"):
        bad.check_identity(params, y0)


@pytest.mark.parametrize("kwargs, message", [
    ({"T": 0}, r"LayerParallelOptions\.T=0 must be a finite number > 0"),
    ({"hs": [0.1, -1]}, r"LayerParallelOptions\.hs=\[0\.1, -1\] must be None or a non-empty sequence"),
    ({"forward": {"max_iter": 3}}, r"LayerParallelOptions\.forward=.* must be an lpt\.mgrit\.MGRITOptions"),
    ({"tol": -1e-3}, r"LayerParallelOptions\.tol=-0\.001 must be None"),
    ({"one_shot_cycles": (2, 0)}, r"LayerParallelOptions\.one_shot_cycles=\(2, 0\) must be two integers ≥ 1"),
    ({"batch_axis": -1}, r"LayerParallelOptions\.batch_axis=-1 must be None or an integer ≥ 0"),
    ({"comm": "mpi"}, r"LayerParallelOptions\.comm='mpi' must be an lpt\.parallel\.comm\.MPIComm"),
    ({"mesh": "mesh"}, r"LayerParallelOptions\.mesh='mesh' must be a jax\.sharding\.Mesh with axes"),
])
def test_bad_options_get_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        lpt.LayerParallelOptions(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs_get_one_clear_line():
    step, params, y0, _ = problem(4)
    with pytest.raises(ValueError, match=r"share their leading \(layer\) axis N"):
        lpt.layer_parallel(step)({"W": params["W"], "c": params["c"][:3]}, y0)
    with pytest.raises(ValueError, match=r"LayerParallelOptions\.hs has 2 step sizes, the parameters 4 layers"):
        lpt.layer_parallel(step, lpt.LayerParallelOptions(hs=(0.5, 0.5)))(params, y0)
    with pytest.raises(ValueError, match=r"options=3 must be an lpt\.LayerParallelOptions"):
        lpt.layer_parallel(step, 3)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:4]).reshape(4, 1), ("data", "layers"))
    with pytest.raises(ValueError, match=r"holds 6 samples on LayerParallelOptions\.batch_axis=0, which do not split"):
        lpt.layer_parallel(step, lpt.LayerParallelOptions(mesh=mesh, batch_axis=0))(params, problem(4, batch=6)[2])
    explicit = jax.make_mesh((1, 1), ("data", "layers"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    with pytest.raises(ValueError, match=r"LayerParallelOptions\.mesh has axis types .* use Auto axes"):
        lpt.LayerParallelOptions(mesh=explicit)


def test_import_lpt_stays_light():
    """``import lpt`` does not import the API (nor the solvers) until ``lpt.layer_parallel`` is used."""
    import subprocess
    import sys

    code = "import sys, lpt; a = 'lpt.api' in sys.modules; lpt.layer_parallel; print(a, 'lpt.api' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False",
                                                                                                          "True"]
