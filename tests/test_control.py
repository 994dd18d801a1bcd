"""Inexactness control of the one-shot solver: stopping relative to the state norm, the periodic bias check
against the exact gradient, the switch to serial training, the convergence factors and their log."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.mgrit import MGRITOptions, MGRITSolver, mgrit_solve
from lpt.mgrit.solve import MGRITStats, convergence_factor, last_factor
from lpt.train import run
from test_mgrit_training import make_problem, rel_err, serial_value_and_grad, value, value_and_grad


def adaptive(**cfg) -> MGRITSolver:
    return MGRITSolver.from_config({"control": "adaptive", **cfg}, full_batch=False)


def test_state_norm_leaves_out_identity_padding():
    model, params, x, _ = make_problem(50, T=5.0)  # 50 layers, m = 4: padded to 52 with identity steps
    y0 = model.open(params, x)
    u, stats = mgrit_solve(model.step, params["layers"], model.step_sizes(y0.dtype), y0, MGRITOptions(max_iter=3))
    assert u.shape[0] == 51
    assert float(stats.state_norm) == pytest.approx(float(jnp.linalg.norm(u[1:])), rel=1e-12)


def test_factors_are_geometric_means_over_cycles_from_the_second():
    stats = MGRITStats(jnp.array([4.0, 1.0, 0.25, 0.5, jnp.nan]), jnp.asarray(2.0), jnp.asarray(4), jnp.asarray(1.0))
    # ratios of cycles 2..4: 1/4, 1/4, 2 -> (0.5/4)^(1/3) = 0.5; the first cycle's 4/2 is left out
    assert float(convergence_factor(stats)) == pytest.approx(0.5, rel=1e-12)
    assert float(convergence_factor(stats, 2, 3)) == pytest.approx(0.25, rel=1e-12)
    assert float(convergence_factor(stats, 1)) == pytest.approx((0.5 / 2.0) ** 0.25, rel=1e-12)
    assert float(last_factor(stats)) == pytest.approx(2.0)
    one = MGRITStats(jnp.array([1.0, jnp.nan]), jnp.asarray(2.0), jnp.asarray(1), jnp.asarray(1.0))
    assert np.isnan(float(convergence_factor(one))) and np.isnan(float(last_factor(one)))


@pytest.mark.slow(seconds=22)
def test_adaptive_cycles_stop_at_the_relative_target():
    model, params, x, y = make_problem(64, T=5.0)
    cycles = []
    for tol in (1e-2, 1e-4, 1e-6):
        solver = adaptive(control_tol=tol, fwd_iters=1, bwd_iters=1, control_max_iters=12, control_every=1000)
        state = solver.init_state(model, params, x)
        _, _, _, state, stats = value_and_grad(solver, model, params, x, y, state)
        for prefix in ("fwd", "bwd"):
            k, r, norm = int(stats[f"{prefix}_cycles"]), np.asarray(stats[f"{prefix}_residual"]), float(
                stats[f"{prefix}_norm"])
            assert 1 <= k < 12 and r[k - 1] <= tol * norm and np.all(np.isnan(r[k:]))
            if k > 1:  # one cycle earlier the target was not met (the norm changes by < 1 % between cycles)
                assert r[k - 2] > 0.99 * tol * norm
            cycles.append(k)
        assert int(state.mode) == 0 and int(state.count) == 1
    fwd, bwd = cycles[0::2], cycles[1::2]
    assert fwd == sorted(fwd) and bwd == sorted(bwd) and fwd[-1] > fwd[0] and bwd[-1] > bwd[0]


def test_least_cycles_are_done_even_when_the_target_is_met():
    model, params, x, y = make_problem(64, T=1.0)
    solver = adaptive(control_tol=0.5, fwd_iters=3, bwd_iters=2)
    _, _, _, _, stats = value_and_grad(solver, model, params, x, y, solver.init_state(model, params, x))
    assert int(stats["fwd_cycles"]) == 3 and int(stats["bwd_cycles"]) == 2


@pytest.mark.slow(seconds=14)
def test_bias_check_tightens_then_switches_to_serial():
    """A loose tolerance (one cycle) with a cosine threshold no one-shot gradient meets: every check tightens,
    after one tightening the next check switches to serial, whose gradient is exact."""
    model, params, x, y = make_problem(64, T=5.0)
    solver = adaptive(control_tol=0.9, fwd_iters=1, bwd_iters=1, control_every=2, control_min_cos=0.999999999,
                      control_tightenings=1)
    state = solver.init_state(model, params, x)
    ref_obj, ref_grads = serial_value_and_grad(model, params, x, y)
    modes, cosines = [], []
    for _ in range(6):
        obj, _, grads, state, stats = value_and_grad(solver, model, params, x, y, state)
        modes.append(int(stats["mode"]))
        cosines.append(float(stats["grad_cos"]))
    assert modes == [0, 0, 1, 1, 2, 2] and int(state.mode) == 2 and int(state.count) == 6
    assert np.isnan(cosines[0]) and np.isnan(cosines[2]) and np.all(np.isnan(cosines[4:]))  # no checks when serial
    assert 0 < cosines[1] < 0.999999999 and 0 < cosines[3] < 0.999999999
    # serial mode: the exact gradient, no cycles, NaN residuals
    assert rel_err(grads, ref_grads) < 1e-14 and float(obj) == pytest.approx(float(ref_obj), rel=1e-14)
    assert int(stats["fwd_cycles"]) == 0 and np.all(np.isnan(stats["fwd_residual"]))
    assert float(value(solver, model, params, x, y, state)) == pytest.approx(float(ref_obj), rel=1e-14)


def test_bias_check_leaves_an_accurate_gradient_alone():
    model, params, x, y = make_problem(64, T=1.0)
    solver = adaptive(control_tol=1e-6, control_every=3, control_min_cos=0.99)
    state = solver.init_state(model, params, x)
    cos = []
    for _ in range(6):
        _, _, _, state, stats = value_and_grad(solver, model, params, x, y, state)
        cos.append(float(stats["grad_cos"]))
    assert int(state.mode) == 0
    assert np.isnan(cos[0]) and np.isnan(cos[1]) and cos[2] > 0.999999 and cos[5] > 0.999999


@pytest.mark.parametrize("key,value,words", [
    ("control", "sometimes", "solver.control='sometimes' is not valid; choose one of ['fixed', 'adaptive']"),
    ("control_tol", 2.0, "solver.control_tol=2.0 must be a number in (0, 1)"),
    ("control_every", 0, "solver.control_every=0 must be an integer ≥ 1"),
    ("control_min_cos", 1.5, "solver.control_min_cos=1.5 must be a number in [-1, 1)"),
    ("control_max_iters", 1, "solver.control_max_iters=1 must be ≥ solver.fwd_iters=3"),
])
def test_bad_control_options_name_the_option(key, value, words):
    with pytest.raises(ValueError) as err:
        MGRITSolver.from_config({"control": "adaptive", key: value}, full_batch=True)
    assert words in str(err.value)


@pytest.mark.slow(seconds=12)
def test_run_logs_cycles_mode_and_bias_checks(tmp_path):
    cfg = compose_config(["dataset.n_train=500", "dataset.n_val=100", "model.depth=16", "train.steps=12",
                          "solver=mgrit", "solver.control=adaptive", "solver.control_every=5",
                          "solver.control_tol=1e-4"])
    run(cfg, tmp_path)
    m = read_run(tmp_path).mgrit
    for key in ("mode", "grad_cos", "fwd_cycles", "bwd_cycles", "fwd_norm", "fwd_initial", "fwd_factor_last"):
        assert m[key].shape == (12,), key
    assert m["fwd_residual"].shape == (12, 6) and m["fwd_rel_residual"].shape == (12, 6)
    checked = np.flatnonzero(np.isfinite(m["grad_cos"])) + 1
    np.testing.assert_array_equal(checked, [5, 10])
    assert np.all((m["fwd_cycles"] >= 2) & (m["fwd_cycles"] <= 6)) and np.all(m["mode"] == 0)
    # at least the configured cycles (fwd_iters = bwd_iters = 3); every solve ends at the target or after the most
    for prefix in ("fwd", "bwd"):
        k = m[f"{prefix}_cycles"].astype(int)
        last = m[f"{prefix}_rel_residual"][np.arange(12), k - 1]
        assert np.all(k >= 3) and np.all((last <= 1e-4) | (k == 6)), prefix
    # the mode rises exactly after the checks whose cosine is below control_min_cos = 0.95
    checks = np.flatnonzero(np.isfinite(m["grad_cos"]))
    mode = np.zeros(12, int)
    for first_tighter in checks[m["grad_cos"][checks] < 0.95] + 1:
        mode[first_tighter:] += 1
    np.testing.assert_array_equal(m["mode"], mode)


@pytest.mark.optimized
@pytest.mark.slow(seconds=27)
def test_diagnostic_shows_where_the_one_shot_error_comes_from(tmp_path):
    """`scripts/diagnose_one_shot.py` on a short peaks run (1000 points, 200 steps; 2 forward cycles with FCF, the
    former defaults of the README's table): the warm-started forward
    solve reduces the error against the exact states in every step (the residual growth in the log is not an
    error growth), and a second adjoint cycle cuts the adjoint error several-fold (measured 0.018 -> 0.0024)."""
    import subprocess
    import sys

    from conftest import on_worker_core
    from test_scripts import SCRIPTS

    out = {}
    for bwd in (1, 2):
        path = tmp_path / f"bwd{bwd}.npz"
        proc = subprocess.run(on_worker_core([sys.executable, str(SCRIPTS / "diagnose_one_shot.py"), "peaks", "--steps",
                                              "200", "dataset.n_train=1000", "solver.fwd_iters=2",
                                              "solver.nrelax_fine=1", "solver.growth_cycles=0",
                                              f"solver.bwd_iters={bwd}", "--out", str(path)]),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "forward error grew: 0.0%" in proc.stdout, proc.stdout
        out[bwd] = np.load(path)
    for d in out.values():
        assert np.isnan(d["fwd_start"][0]) and np.all(d["fwd_end"][1:] < d["fwd_start"][1:])
        assert np.median(d["fwd_end"][1:] / d["fwd_start"][1:]) < 0.2
        assert np.all(np.isfinite(d["grad_cos"])) and d["fwd_residual"].shape == (200, 2)
    later = slice(67, None)
    adj1, adj2 = np.median(out[1]["adj_end"][later]), np.median(out[2]["adj_end"][later])
    assert adj2 < adj1 / 3, (adj1, adj2)
    assert np.median(out[2]["grad_err"][later]) < np.median(out[1]["grad_err"][later])
