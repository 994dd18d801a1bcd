"""The performance model's arithmetic on known inputs (no timing): work counts, critical path, messages,
monotonicity, crossover, best settings, cost curves, α/β fit, the calibration file and the lpt-model CLI."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lpt.mgrit import MGRITOptions
from lpt.perfmodel import (Calibration, CalibrationError, CommCosts, CostCurve, Grid, PerfModel, Profile,
                           cycle_ops, layout_for, solve_ops, textbook_level_work,
                           textbook_work_per_cycle)
from lpt.perfmodel.comm import fit_alpha_beta

CURVES = ("step", "adjoint", "linearize", "theta", "serial")


def make_profile(step=None, *, serial=None, sweep=0.0, fixed=0.0, key="test/net", state_bytes=32,
                 param_bytes=288) -> Profile:
    """A profile whose curves are ``step`` (default: 1 second per evaluation, whatever the batch) and whose
    serial value_and_grad costs ``serial`` per layer (default: 2 seconds, whatever the trajectory)."""
    curve = step or CostCurve.constant(1.0)
    curves = {name: curve for name in CURVES}
    curves["serial"] = serial or CostCurve.constant(2.0)
    return Profile(key=key, batch=1, state_bytes_per_sample=state_bytes, param_bytes_per_layer=param_bytes,
                   curves=curves, sweep=sweep, fixed=fixed)


# --- textbook work (DESIGN §7) --------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 4, 8])
def test_textbook_work_per_v_cycle(m):
    n = 4096
    assert textbook_work_per_cycle(n, m, nrelax=0) == pytest.approx(n * (2 * m - 1) / (m - 1))  # F-relaxation
    assert textbook_work_per_cycle(n, m, nrelax=1) == pytest.approx(n * (3 * m - 1) / (m - 1))  # FCF
    # it is the sum over the levels n/m^l of the per-level work n((2+ν)m − 1)/m, over infinitely many levels
    levels = sum(textbook_level_work(n / m**lvl, m, 0) for lvl in range(60))
    assert levels == pytest.approx(textbook_work_per_cycle(n, m, 0), rel=1e-12)


def test_textbook_level_work_counts_relaxation_residual_and_final_relaxation():
    n, m = 64, 4
    f_relax, residual, cf = n * (m - 1) / m, n / m, n
    assert textbook_level_work(n, m, 0) == pytest.approx(2 * f_relax + residual)
    assert textbook_level_work(n, m, 2) == pytest.approx(2 * f_relax + residual + 2 * cf)


# --- the implementation's operation counts ---------------------------------------------------------------
def test_cycle_ops_hand_count():
    """N = 16, m = 2, 3 levels (16, 8, 4), F on level 0 and FCF below: level 0 one final sweep (2 steps over
    8 intervals); level 1 the FAS right-hand side (1 step over 8), F and CF sweep and the final sweep (3 × 2
    steps over 4 intervals); the coarsest its right-hand side (1 step over 4) and a serial sweep of 4 steps."""
    opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, nrelax_fine=0, max_iter=1)
    layout = layout_for(16, opts)
    assert [tuple(s) for s in layout.shapes] == [(16, 2), (8, 2), (4, 0)]
    ops = cycle_ops(layout, opts)
    assert dict(ops.evals) == {("step", 8): 3, ("step", 4): 7, ("step", 1): 4}
    assert ops.work == 3 * 8 + 7 * 4 + 4
    assert ops.critical_path == 14 and ops.sweeps == 5
    assert not ops.messages  # one rank: no messages
    # a cold solve adds the nested iteration (4 serial steps, one F-sweep per level) and the first F-sweep
    solve = solve_ops(layout, opts, initial="guess")
    assert dict(solve.evals) == {("step", 1): 8, ("step", 4): 9, ("step", 8): 7}


def test_critical_path_formula():
    """Sequential steps of a V-cycle: Σ_l<L (sweeps_l · m_l + [l > 0]) + 1 + n_L (DESIGN §7:
    ≈ (levels − 1)·(relaxation steps per interval) + n_coarsest)."""
    for n, m, nrelax, levels in [(1024, 4, 1, 4), (256, 2, 0, 6), (4096, 8, 1, 3)]:
        opts = MGRITOptions(cfactor=m, max_levels=levels, nrelax=nrelax, max_iter=1)
        shapes = layout_for(n, opts).shapes
        expected = (nrelax + 1) * m  # finest level: CF-sweeps and the final F-sweep (the first F is skipped)
        expected += sum((nrelax + 2) * s.m + 1 for s in shapes[1:-1])
        expected += 1 + shapes[-1].n
        assert cycle_ops(layout_for(n, opts), opts).critical_path == expected
        # with one second per step evaluation and nothing else, a cycle takes its critical path in seconds
        perf = PerfModel(make_profile(), batch=1)
        assert perf.cycle(n, opts).total == pytest.approx(expected)


def test_implementation_work_is_close_to_the_textbook_count():
    """This implementation skips the first F-relaxation of every cycle after the first and relaxes the
    coarse levels fully, so its work per cycle is N((ν+1) + (ν+3)/(m−1)) − small terms."""
    n, m = 4096, 4
    for nrelax in (0, 1):
        opts = MGRITOptions(cfactor=m, max_levels=20, nrelax=nrelax, max_iter=1)
        work = cycle_ops(layout_for(n, opts), opts).work
        assert work == pytest.approx(n * ((nrelax + 1) + (nrelax + 3) / (m - 1)), rel=0.01)
        assert 0.75 < work / textbook_work_per_cycle(n, m, nrelax) < 1.25


def test_halo_messages_per_cycle():
    """On P layer ranks each C-relaxation of a distributed level sends one state to the neighbour; the gathered
    level costs two all-gathers; the residual norm one all-reduce."""
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=1)
    ops = cycle_ops(layout_for(1024, opts, 4), opts)
    layout = layout_for(1024, opts, 4)
    assert ops.messages[("shift", 1)] == layout.dist  # one CF-sweep per distributed level
    assert ops.messages[("allgather", layout.shapes[layout.dist - 1].n_coarse // 4)] == 2
    assert ops.messages[("allreduce", 0)] == 1
    # a message costs α + β·bytes: with β = 0 the parallel cycle is the compute plus (#messages weighted) α
    alpha = 1e-3
    base = PerfModel(make_profile(), batch=1)
    slow = PerfModel(make_profile(), batch=1, comm=CommCosts(alpha=alpha))
    grid = Grid(layers=4, backend="mpi")
    rounds = math.ceil(math.log2(4))
    expected = alpha * (layout.dist + 2 * rounds + rounds)
    assert slow.cycle(1024, opts, grid).total - base.cycle(1024, opts, grid).total == pytest.approx(expected)


def test_chunks_divide_the_stacked_batch():
    """On P layer ranks the finest level relaxes 1/P of its intervals per step evaluation; the gathered coarsest
    level (256 steps) is solved whole on every rank."""
    opts = MGRITOptions(cfactor=4, max_levels=2, nrelax=0, max_iter=1)
    one = cycle_ops(layout_for(1024, opts, 1), opts)
    four = cycle_ops(layout_for(1024, opts, 4), opts)
    assert dict(one.evals) == {("step", 256): 4 + 1, ("step", 1): 256}  # sweep, coarse right-hand side
    assert dict(four.evals) == {("step", 64): 4, ("step", 256): 1, ("step", 1): 256}


# --- predictions ------------------------------------------------------------------------------------------
def throughput_profile(batch: int = 1000, **kw) -> Profile:
    """A device whose step costs 1 µs launch + 1 ns per sample (throughput bound for large batches); a serial
    layer (forward and backward) costs two steps at the batch."""
    step = CostCurve.linear(1e-6, 1e-9, sizes=(1, 1e2, 1e4, 1e6, 1e8))
    return make_profile(step, serial=CostCurve.constant(2 * step(batch)), **kw)


def test_serial_time_is_linear_in_depth():
    perf = PerfModel(throughput_profile(100, fixed=1e-3), batch=100)
    t = [perf.serial_gradient(n) for n in (64, 128, 256)]
    assert t[1] - t[0] == pytest.approx((t[2] - t[1]) / 2)
    assert perf.serial_gradient(0) == pytest.approx(1e-3)


def test_line_search_evaluations_cost_a_gradient_each():
    """L-BFGS's zoom line search takes value and gradient at every trial point, and the step after it takes the
    evaluation at the point it accepted (lpt.train.state.Carried): a step with k evaluations costs k gradients,
    serial and layer-parallel."""
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    plain = PerfModel(throughput_profile(), batch=1000)
    lbfgs = PerfModel(throughput_profile(), batch=1000, value_evals=2.5)
    grid = Grid(layers=4, backend="mesh")
    assert lbfgs.serial_step(256) == pytest.approx(2.5 * plain.serial_gradient(256))
    assert lbfgs.training_step(256, opts, opts, grid, warm=True) == pytest.approx(
        2.5 * plain.gradient(256, opts, opts, grid, warm=True))
    assert plain.training_step(256, opts, opts, grid) == pytest.approx(plain.gradient(256, opts, opts, grid))


def test_monotonicity():
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    perf = PerfModel(throughput_profile(), batch=1000, comm=CommCosts(alpha=1e-6, beta=1e-10))
    # more layers cost more, on one rank and on several
    for grid in (Grid(), Grid(layers=4, backend="mpi")):
        times = [perf.gradient(n, opts, opts, grid) for n in (256, 512, 1024, 2048)]
        assert times == sorted(times)
    # strong scaling: more ranks, less time; the speedup grows
    times = [perf.training_step(4096, opts, opts, Grid(layers=p, backend="mpi")) for p in (1, 2, 4, 8, 16)]
    assert times == sorted(times, reverse=True)
    # more cycles cost more
    more = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=3)
    assert perf.gradient(1024, more, opts) > perf.gradient(1024, opts, opts)


def test_scaling_tables():
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    perf = PerfModel(throughput_profile(), batch=1000, comm=CommCosts(alpha=1e-6, beta=1e-10))
    strong = perf.strong_scaling(4096, [1, 2, 4, 8], opts, opts)
    assert [r["depth"] for r in strong] == [4096] * 4 and strong[0]["parallel_efficiency"] == pytest.approx(1)
    for r in strong:
        assert r["speedup"] == pytest.approx(r["serial_s"] / r["parallel_s"])
        assert r["parallel_efficiency"] == pytest.approx(strong[0]["parallel_s"] / (r["ranks"] * r["parallel_s"]))
    weak = perf.weak_scaling(256, [1, 2, 4, 8], opts, opts)
    assert [r["depth"] for r in weak] == [256, 512, 1024, 2048]
    assert [r["serial_s"] for r in weak] == sorted(r["serial_s"] for r in weak)


@pytest.mark.parametrize("kind", ["strong", "weak"])
def test_efficiencies_above_one_come_from_cheaper_samples_at_small_sizes(kind):
    """The README's calibration (results/perfmodel/calibration.json, 2-core CPU) prices a stacked sample of some
    curves up to 5.7× lower at 1.6e5 samples than at 1.28e6, so strong scaling of peaks_1024 comes out above
    efficiency 1 at 4–16 ranks. On the same profile with costs proportional to size (throughput bound) the
    efficiency is at most 1 and falls with the ranks: the model's work and messages alone gain nothing."""
    cal = Calibration.load(Path(__file__).resolve().parents[1] / "results" / "perfmodel" / "calibration.json")
    profile = cal.profiles["dense/w8/in2/smoothrelu/float32"]
    opts = MGRITOptions(cfactor=4, max_levels=10, min_coarse=2, nrelax=1, max_iter=2)
    perf = PerfModel(profile, batch=5000, comm=cal.comm["mpi"])
    ranks = [1, 2, 4, 8, 16, 32]
    rows = (perf.strong_scaling(1024, ranks, opts, opts) if kind == "strong"
            else perf.weak_scaling(1024, ranks[:5], opts, opts))
    bound = [r["throughput_efficiency"] for r in rows]
    assert bound[0] == pytest.approx(1) and all(b <= 1 + 1e-12 for b in bound)
    assert bound == sorted(bound, reverse=True)
    flat = PerfModel(profile.throughput_bound(), batch=5000, comm=cal.comm["mpi"])
    again = (flat.strong_scaling(1024, ranks, opts, opts) if kind == "strong"
             else flat.weak_scaling(1024, ranks[:5], opts, opts))
    assert [r["parallel_efficiency"] for r in again] == pytest.approx(bound)
    if kind == "strong":
        assert max(r["parallel_efficiency"] for r in rows) > 1.05  # the calibrated curves' cache effect, as stated
    for name, curve in profile.throughput_bound().curves.items():  # proportional, equal at the largest size
        s = profile.curves[name].sizes[-1]
        assert curve(s) == pytest.approx(profile.cost(name, s))
        assert curve(s / 8) == pytest.approx(curve(s) / 8)


def test_crossover_ranks_is_the_first_that_beats_serial():
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    perf = PerfModel(throughput_profile(), batch=1000, comm=CommCosts(alpha=1e-6, beta=1e-10))
    p = perf.crossover_ranks(4096, opts, opts)
    assert p is not None and p > 1  # one device does more work than the serial sweep
    serial = perf.serial_step(4096)
    assert perf.training_step(4096, opts, opts, Grid(layers=p, backend="mpi")) < serial
    assert perf.training_step(4096, opts, opts, Grid(layers=p // 2, backend="mpi" if p > 2 else "single")) >= serial
    # messages that cost more than a whole serial step: never
    hopeless = PerfModel(throughput_profile(), batch=1000, comm=CommCosts(alpha=10.0))
    assert hopeless.crossover_ranks(4096, opts, opts) is None


def test_crossover_depth_on_an_ideal_parallel_device():
    """A device where a step costs the same for any stacked batch (unlimited parallelism): MGRIT's critical
    path grows like log N, the serial sweep like N, so layer-parallel wins from some depth on one device."""
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    perf = PerfModel(make_profile(), batch=1)
    n = perf.crossover_depth(1, opts, opts)
    assert n is not None
    assert perf.training_step(n, opts, opts) < perf.serial_step(n)
    assert perf.training_step(n // 2, opts, opts) >= perf.serial_step(n // 2)


def test_best_settings_sorted_and_valid():
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    perf = PerfModel(make_profile(), batch=1)
    rows = perf.best_settings(1024, opts, opts, cfactors=(2, 4, 8))
    times = [r["step_s"] for r in rows]
    assert times == sorted(times) and len(rows) >= 6
    best = rows[0]
    check = perf.training_step(1024, MGRITOptions(cfactor=best["cfactor"], max_levels=best["max_levels"], nrelax=1,
                                                  max_iter=2),
                               MGRITOptions(cfactor=best["cfactor"], max_levels=best["max_levels"], nrelax=1,
                                            max_iter=2))
    assert check == pytest.approx(best["step_s"])
    assert {(r["cfactor"], r["levels"]) for r in rows} == {(r["cfactor"], r["levels"]) for r in rows}  # unique
    assert len({(r["cfactor"], r["levels"]) for r in rows}) == len(rows)


def test_data_parallel_splits_the_batch_and_adds_the_gradient_allreduce():
    opts = MGRITOptions(cfactor=4, max_levels=10, nrelax=1, max_iter=2)
    perf = PerfModel(throughput_profile(), batch=1000, comm=CommCosts(alpha=1e-4, beta=1e-9))
    one = perf.gradient(1024, opts, opts, Grid())
    two = perf.gradient(1024, opts, opts, Grid(data=2, backend="mpi"))
    half = PerfModel(throughput_profile(), batch=500).gradient(1024, opts, opts, Grid())  # same curves
    assert two == pytest.approx(half + perf.data_allreduce(1024, Grid(data=2)))
    assert two < one


# --- cost curves, α/β fit, calibration file -------------------------------------------------------------------
def test_cost_curve_interpolation():
    c = CostCurve((10, 100, 1000), (1.0, 10.0, 100.0))
    assert c(10) == 1.0 and c(100) == pytest.approx(10.0)
    assert c(31.6227766) == pytest.approx(10**0.5, rel=1e-6)  # log-log: a power law is exact
    assert c(1) == 1.0  # flat below
    assert c(5000) == pytest.approx(500.0)  # proportional above
    assert CostCurve((10, 100), (1.0, 2.0), above="flat")(1e6) == 2.0
    with pytest.raises(CalibrationError, match="increasing"):
        CostCurve((10, 5), (1.0, 2.0))
    with pytest.raises(CalibrationError, match="positive and finite"):
        CostCurve((1, 2), (1.0, -2.0))


def test_alpha_beta_fit_is_exact_on_a_line():
    sizes = [8, 64, 512, 4096, 32768, 1 << 20]
    costs = fit_alpha_beta(sizes, [2e-6 + 5e-10 * s for s in sizes])
    assert costs.alpha == pytest.approx(2e-6, rel=1e-6) and costs.beta == pytest.approx(5e-10, rel=1e-6)
    assert costs.message(1000) == pytest.approx(2e-6 + 5e-7)


def test_calibration_file_round_trip(tmp_path):
    profile = Profile(key="dense/w8/in2/tanh/float32", batch=64, state_bytes_per_sample=32,
                      param_bytes_per_layer=288,
                      curves={name: CostCurve((64, 640, 6400), (1e-5, 2e-5, 9e-5),
                                              above="flat" if name == "serial" else "linear") for name in CURVES},
                      sweep=3e-6, fixed=1e-4, bandwidth=5e9)
    cal = Calibration(machine={"host": "test"}, comm={"mpi": CommCosts(1e-6, 2e-10), "mesh": CommCosts(3e-6, 0.0)},
                      profiles={profile.key: profile})
    path = cal.save(tmp_path / "cal.json")
    back = Calibration.load(path)
    assert back.to_json() == cal.to_json()
    assert back.profile(profile.key) == profile
    assert back.comm_costs("mpi") == CommCosts(1e-6, 2e-10)
    assert back.comm_costs("single") == CommCosts(0.0, 0.0)
    # predictions from the file equal those from memory
    opts = MGRITOptions(cfactor=4, max_iter=2)
    assert (PerfModel(back.profile(profile.key), 64).gradient(256, opts, opts)
            == PerfModel(profile, 64).gradient(256, opts, opts))


def test_calibration_errors_are_clear(tmp_path):
    with pytest.raises(CalibrationError, match="no calibration file at .*lpt-model calibrate"):
        Calibration.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CalibrationError, match="not an lpt performance-model calibration"):
        Calibration.load(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="no calibration for the network 'conv/x'.*lpt-model calibrate"):
        Calibration().profile("conv/x")
    with pytest.raises(CalibrationError, match="parallel=mpi.*mpirun"):
        Calibration().comm_costs("mpi")


# --- the command line ----------------------------------------------------------------------------------------
def _lpt_model(args, cwd, env=None):
    exe = Path(sys.executable).with_name("lpt-model")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_lpt_model_predicts_from_a_calibration_file(tmp_path):
    from lpt.cli.compose import compose_config
    from lpt.perfmodel.config import network_from_config, profile_key_for

    cfg = compose_config(["dataset.n_train=100", "dataset.n_val=20", "model.depth=256"])
    model, _, _ = network_from_config(cfg)
    key = profile_key_for(model, "float32")
    profile = Profile(key=key, batch=100, state_bytes_per_sample=32, param_bytes_per_layer=288,
                      curves={name: CostCurve.linear(1e-6, 1e-9) for name in CURVES})
    Calibration(comm={"mpi": CommCosts(1e-6, 1e-10)}, profiles={key: profile}).save(tmp_path / "cal.json")
    overrides = ["dataset.n_train=100", "dataset.n_val=20", "model.depth=256", "solver=mgrit"]
    proc = _lpt_model(["predict", *overrides, "--file", "cal.json", "--ranks", "4", "--backend", "mpi"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gradient, layer-parallel" in proc.stdout and "predicted speedup" in proc.stdout
    predicted_ms = float(re.search(r"training step, layer-parallel\s+([0-9.]+) ms", proc.stdout).group(1))
    proc = _lpt_model(["scaling", "strong", *overrides, "--file", "cal.json", "--ranks-list", "1,2,4",
                       "--csv", "strong.csv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "strong.csv").read_text().count("\n") == 4
    # the study's multi-rank points are costed with the calibrated message costs, as `predict` costs them
    assert "(α = 1.00 us, β = 0.1000 ns/B)" in proc.stdout
    rows = list(csv.DictReader((tmp_path / "strong.csv").open()))
    assert float(rows[2]["ranks"]) == 4
    assert all(float(r["throughput_efficiency"]) <= float(rows[0]["throughput_efficiency"]) for r in rows)
    # these linear costs have no cache effect: no efficiency above 1, so no note about one
    assert all(float(r["parallel_efficiency"]) <= 1 + 1e-9 for r in rows) and "efficiency above 1" not in proc.stdout
    assert 1e3 * float(rows[2]["parallel_s"]) == pytest.approx(predicted_ms, rel=1e-3, abs=1.5e-3)
    for cmd in (["crossover"], ["best", "--cfactors", "2,4"]):
        proc = _lpt_model([*cmd, *overrides, "--file", "cal.json"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = _lpt_model(["predict", *overrides, "--file", "nowhere.json"], tmp_path)
    assert proc.returncode == 2 and "lpt-model: error: no calibration file" in proc.stderr
