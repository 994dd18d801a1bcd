"""The coarse-step stability estimate H·ρ of the MGRIT levels (lpt.mgrit.stability), its warning and its log."""

from __future__ import annotations

import logging

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, mgrit_solve
from lpt.mgrit.hierarchy import inject_first, level_shapes
from lpt.mgrit.stability import coarse_step_stability, spectral_radius, stability_message
from lpt.cli.compose import compose_config
from lpt.model import ResNet
from lpt.train import run


def _linear_model(layer: str, depth: int, T: float, width: int = 4) -> ResNet:
    shape = (6, 6, width) if layer != "dense" else (width,)
    return ResNet(input_shape=shape, num_outputs=2, depth=depth, width=width, T=T, activation="identity",
                  layer=layer, opening="zero")


def _with_layers(model: ResNet, K: jnp.ndarray) -> dict:
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    params["layers"]["K"] = jnp.broadcast_to(K, params["layers"]["K"].shape)
    return params


def _levels(model: ResNet, params: dict, options: MGRITOptions, samples: int = 3) -> tuple[np.ndarray, tuple]:
    shapes = level_shapes(model.depth, options)
    x = jax.random.normal(jax.random.PRNGKey(1), (samples, *model.input_shape), jnp.float64)
    y0 = model.open(params, x)
    values = coarse_step_stability(model.step, params["layers"], model.step_sizes(jnp.float64), y0, shapes,
                                   inject_first)
    return np.asarray(values), shapes


@pytest.mark.parametrize("kind", ["real", "rotation"])
def test_spectral_radius_of_known_dense_steps(kind):
    """F(y) = K y with a dominant real eigenvalue −3 (diag) or a rotation pair ±2i: ρ to 1 %."""
    if kind == "real":
        K, rho = jnp.diag(jnp.array([-3.0, 1.5, -0.5, 1.0])), 3.0
    else:
        rot = jnp.array([[0.0, -2.0], [2.0, 0.0]])
        K, rho = jnp.block([[rot, jnp.zeros((2, 2))], [jnp.zeros((2, 2)), 0.3 * jnp.eye(2)]]), 2.0
    model = _linear_model("dense", 8, 1.0)
    y = jax.random.normal(jax.random.PRNGKey(0), (3, 4), jnp.float64)
    est = spectral_radius(model.step, {"K": K, "b": jnp.zeros(4)}, y)
    assert abs(float(est) - rho) <= 0.01 * rho


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_h_rho_of_every_coarse_level_equals_the_analytic_value(layer):
    """Identity activation, every layer K = −a·I (dense, or a 3×3 convolution with only the centre tap): level ℓ
    takes steps H_ℓ = m^ℓ·h and its H·ρ is m^ℓ·h·a exactly; the estimate matches to 1 %."""
    a, depth, T = 1.5, 64, 8.0
    model = _linear_model(layer, depth, T)
    if layer == "dense":
        K = -a * jnp.eye(4)
    else:
        K = jnp.zeros((3, 3, 4, 4)).at[1, 1].set(-a * jnp.eye(4))
    options = MGRITOptions(cfactor=4, max_levels=4, min_coarse=1)
    values, shapes = _levels(model, _with_layers(model, K), options)
    assert [s.n for s in shapes] == [64, 16, 4, 1]
    expected = np.array([4, 16, 64]) * model.h * a
    np.testing.assert_allclose(values, expected, rtol=0.01)


def test_warning_names_the_level_and_what_to_change():
    """(H·ρ − 1)^{n_ℓ} > 100 with H·ρ ≥ 2 warns; a short level or H·ρ < 2 does not."""
    shapes = level_shapes(64, MGRITOptions(cfactor=4, max_levels=4, min_coarse=1))  # 64, 16, 4, 1
    assert stability_message([0.5, 1.9, 99.0], shapes, 0.1) is None  # level 3: one step, 98^1 < 100
    assert stability_message([0.5, 1.9, 102.0], shapes, 0.1) is not None  # 101^1 > 100
    message = stability_message([0.5, 4.1, 102.0], shapes, 0.1)  # level 2: 4 steps, 3.1^4 ≈ 92: not yet
    assert message.startswith("MGRIT coarse level 3 of 3 (1 step of H = 64·h = 6.4) has H·ρ ≈ 102")
    message = stability_message([0.5, 4.3, 1.0], shapes, 0.1)  # 3.3^4 ≈ 119 > 100
    assert "coarse level 2 of 3 (4 steps of H = 16·h = 1.6)" in message
    for option in ("solver.max_levels", "solver.min_coarse", "solver.cfactor", "model.T", "model.init_scale"):
        assert option in message


def test_the_warning_predicts_a_useless_iterate():
    """y' = −a y with h·a = 0.3 (the fine level is stable), N = 256: with cfactor 4 the coarsest level takes 16
    steps of H·a = 4.8, which is warned about, and the coarse initial guess blows up (|1 − 4.8|^16 ≈ 2·10^9):
    after 6 cycles the residual is still larger than the states. With cfactor 2 (H·a ≤ 1.2, no warning) the
    same 6 cycles reach ‖r‖ < 1e-5·‖y_0‖."""
    a, depth = 1.0, 256
    model = _linear_model("dense", depth, 0.3 * depth / a)
    params = _with_layers(model, -a * jnp.eye(4))
    y0 = jax.random.normal(jax.random.PRNGKey(3), (2, 4), jnp.float64)
    for name, cfactor in (("stable", 2), ("unstable", 4)):
        options = MGRITOptions(cfactor=cfactor, max_levels=3, max_iter=6)
        values, shapes = _levels(model, params, options)
        assert (stability_message(values, shapes, model.h) is None) == (name == "stable"), (name, values)
        _, stats = mgrit_solve(model.step, params["layers"], model.step_sizes(jnp.float64), y0, options)
        final = float(stats.residuals[-1]) / float(jnp.linalg.norm(y0))
        assert final < 1e-5 if name == "stable" else final > 1, (name, np.asarray(stats.residuals))


@pytest.mark.slow(seconds=6)
def test_training_logs_h_rho_and_warns_once(tmp_path, caplog):
    """A peaks run with T = 40 (coarse steps far too long for its weights): one warning when it starts, and
    mgrit/coarse_hrho (step × coarse level) holds the estimate at every evaluation and NaN between them."""
    cfg = compose_config(["solver=mgrit", "model.T=40", "train.steps=4", "train.eval_every=2", "logging.log_every=1",
                   "dataset.n_train=200", "dataset.n_val=50", "logging.progress=false"])
    with caplog.at_level(logging.WARNING, logger="lpt"):
        result = run(cfg, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if "MGRIT coarse level" in r.getMessage()]
    assert len(warnings) == 1 and "H·ρ ≈" in warnings[0]
    with h5py.File(result.log_path) as f:
        hrho = f["mgrit/coarse_hrho"][:]
        steps = f["history/step"][:]
    assert hrho.shape == (4, 2)  # N = 32, cfactor 4: levels 32, 8, 2
    evaluated = steps % 2 == 0
    assert np.all(np.isfinite(hrho[evaluated])) and np.all(np.isnan(hrho[~evaluated]))
    assert np.all(hrho[evaluated][:, 1] >= 2)


@pytest.mark.slow(seconds=4)
def test_one_level_run_logs_no_coarse_estimate(tmp_path, caplog):
    """solver.min_coarse ≥ N leaves one level (no coarse steps): the run trains and logs no coarse_hrho column
    (a zero-width row once broke the HDF5 log)."""
    cfg = compose_config(["solver=mgrit", "solver.min_coarse=100", "train.steps=3", "train.eval_every=2",
                          "logging.log_every=1", "dataset.n_train=100", "dataset.n_val=50", "logging.progress=false"])
    with caplog.at_level(logging.WARNING, logger="lpt"):
        result = run(cfg, tmp_path / "run")
    assert not [r for r in caplog.records if "MGRIT coarse level" in r.getMessage()]
    with h5py.File(result.log_path) as f:
        assert "coarse_hrho" not in f["mgrit"] and f["history/step"].shape == (3,)
        assert f.attrs["status"] == "completed"


@pytest.mark.slow(seconds=5)
def test_check_convergence_script_reports_h_rho_warning_and_a_cold_solve(capsys):
    """scripts/check_convergence.py on the main job: two coarse levels, no warning, a converging cold solve; with
    T = 40 the coarsest level is warned about."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_convergence.py"
    spec = importlib.util.spec_from_file_location("check_convergence", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def report(*overrides: str) -> dict[str, str]:
        script.main(["peaks", "dataset.n_train=200", "--samples", "50", "--cycles", "4", "solver=mgrit",
                     "solver.nrelax_fine=1", *overrides])  # FCF on every level, as the README's figures
        lines = capsys.readouterr().out.splitlines()
        return {line.split(":")[0]: line.split(":", 1)[1].strip() for line in lines[1:]}

    out = report()
    assert len([float(v) for v in out["H·rho per coarse level"].split()]) == 2
    assert out["warning"] == "none"
    residuals = [float(v) for v in out["cold solve, ||r_k||/||y|| per cycle"].split()]
    assert len(residuals) == 4 and residuals[-1] < 1e-3 * residuals[0]
    assert float(out["convergence factor (geometric mean, cycles >= 2)"]) < 0.5
    out = report("model.T=40")
    assert out["warning"].startswith("MGRIT coarse level 1 of 2 (8 steps of H = 4·h = 5) has H·ρ ≈")
