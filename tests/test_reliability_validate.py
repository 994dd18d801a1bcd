"""Input validation: every numeric option is checked (type and range) before data loading or compilation.

The property test draws random overrides — valid values and invalid ones (negative, zero, huge, NaN/inf,
float for int, strings, booleans, null, lists) — for many numeric options, runs one training step in-process,
and asserts that every run either trains or stops with a user error (ConfigError, DataError, ModelError)
whose message names an option it was given: never an exception from inside JAX.
"""

from __future__ import annotations

import tempfile
import time

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lpt.cli.compose import compose_config
from lpt.data import DataError
from lpt.model import ModelError
from lpt.train import ConfigError, run
from lpt.train.nonfinite import NonFiniteError
from lpt.train.validate import validate_config

USER_ERRORS = (ConfigError, DataError, ModelError)
TINY = ["dataset.n_train=50", "dataset.n_val=20", "model.depth=4", "model.width=4", "train.steps=1",
        "train.eval_every=1", "logging.progress=false"]

# valid values of each option (drawn besides the invalid ones below)
VALID = {
    "model.depth": [1, 2, 4, 8], "model.width": [1, 2, 4, 6], "model.T": [0.5, 1, 5.0, 1e3],
    "model.kernel_size": [1, 3], "model.init_scale": [0, 0.5, 1.0], "model.gamma_tik": [0, 1e-3],
    "model.gamma_ddt": [0, 1e-3], "model.gamma_class": [0, 1e-2],
    "train.batch_size": ["null", 10, 50], "train.eval_every": [1, 2], "train.checkpoint_every": [1, 5],
    "train.eval_chunk": [1, 7, 4096], "train.lr_factor": [0.1, 0.5, 0.9], "train.max_rejections": [1, 3],
    "train.inject_nan_at_step": ["null", 1], "logging.log_every": [1, 3],
    "optimizer.lr": [1e-3, 0.1, 1e3], "optimizer.weight_decay": [0, 1e-4], "optimizer.clip_norm": [0, 1.0],
    "dataset.n_train": [25, 50, 100], "dataset.n_val": [5, 20], "seed": [0, 1, 2**32 - 1],
    "parallel.data": [1], "parallel.layers": [1],
}
ADAM = {"optimizer.b1": [0, 0.9], "optimizer.b2": [0.5, 0.999], "optimizer.eps": [0, 1e-8]}
SGD = {"optimizer.momentum": [0, 0.9], "optimizer.nesterov": ["true", "false"]}
MGRIT = {
    "solver.cfactor": [2, 4, "[2,4]"], "solver.max_levels": [1, 2, 10], "solver.min_coarse": [1, 2, 100],
    "solver.nrelax": [0, 1, 2], "solver.nrelax_fine": ["null", 0, 1], "solver.fwd_iters": [1, 2, 4],
    "solver.bwd_iters": [1, 2], "solver.abs_tol": [0, 1e-6], "solver.rel_tol": [0, 1e-3],
    "solver.bwd_levels": ["null", 1, 3], "solver.bwd_tol": ["null", 0, 1e-6],
}
INVALID = ["-1", "0", "-2.5", "2.5", "abc", "true", "null", "1000000000000", "4611686018427387904", "1e300", "-1e300",
           "inf", "nan", "-inf", "[1,2]", "''"]


@st.composite
def overrides(draw) -> tuple[list[str], list[str]]:
    """(overrides, drawn option names): solver and optimizer groups, then 1–4 numeric options."""
    solver = draw(st.sampled_from(["serial", "mgrit"]))
    optimizer = draw(st.sampled_from(["adam", "sgd"]))
    options = {**VALID, **(ADAM if optimizer == "adam" else SGD), **(MGRIT if solver == "mgrit" else {})}
    keys = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=4, unique=True))
    out = [f"solver={solver}", f"optimizer={optimizer}"]
    for key in keys:
        value = draw(st.one_of(st.sampled_from(options[key]), st.sampled_from(INVALID)))
        out.append(f"{key}={value}")
    return out, keys


def _names_an_option(message: str, keys: list[str]) -> bool:
    """The message names one of the drawn options (as ``model.depth``, ``depth=`` or ``n_train=``)."""
    return any(key in message or f"{key.rsplit('.', 1)[-1]}=" in message for key in keys)


@pytest.mark.slow(seconds=60)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # e.g. lr=1e300 in float32
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides())
@example((["solver=mgrit", "optimizer=adam", "solver.min_coarse=100"], ["solver.min_coarse"]))  # one level (CI)
def test_random_overrides_train_or_fail_with_a_clear_error(drawn):
    args, keys = drawn
    cfg = compose_config([*TINY, *args])
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            result = run(cfg, run_dir)
        except USER_ERRORS as exc:
            message = str(exc)
            assert _names_an_option(message, keys), (args, message)
            assert "\n" not in message, message  # one line
            event(f"refused: {type(exc).__name__}")
            return
        except NonFiniteError as exc:  # the run started; max_rejections=1 stopped it at the first NaN step
            assert "non-finite" in str(exc) and "max_rejections" in str(exc) + " ".join(args), (args, exc)
            event("trained, stopped on NaN")
            return
    assert result.final, args
    event("trained")


def test_validation_runs_before_data_loading_and_compilation(tmp_path):
    """An invalid option stops the run before the (missing) data files are looked up."""
    cfg = compose_config(["dataset=mnist", "model=conv", f"data_dir={tmp_path}", "solver=mgrit", "solver.fwd_iters=0"])
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"solver.fwd_iters=0 must be an integer ≥ 1"):
        run(cfg, tmp_path / "run")
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "run" / "run.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["model.depth=2.5"], "model.depth=2.5 must be an integer ≥ 1"),
    (["model.depth=true"], "model.depth=True must be an integer ≥ 1, not a boolean"),
    (["model.width=null"], "model.width=None: this option needs a value"),
    (["model.width=1000000000000"], "model.depth=32, model.width=1000000000000 (batch 5000) need at least"),
    (["model.T=inf"], "model.T=inf must be a positive finite number"),
    (["model.init_scale=abc"], "model.init_scale='abc' must be a finite number ≥ 0"),
    (["seed=-1"], "seed=-1 must be an integer with 0 ≤ seed < 2**32"),
    (["seed=4294967296"], "seed=4294967296 must be an integer with 0 ≤ seed < 2**32"),
    (["dtype=3"], "dtype=3 is not valid; choose one of ['float32', 'float64']"),
    (["train.steps=-1"], "train.steps=-1 must be an integer ≥ 1"),
    (["train.eval_every=0.5"], "train.eval_every=0.5 must be an integer ≥ 1"),
    (["train.lr_factor=1"], "train.lr_factor=1 must be a number in (0, 1)"),
    (["train.on_nonfinite=retry"], "train.on_nonfinite='retry' is not valid; choose one of"),
    (["train.max_rejections=0"], "train.max_rejections=0 must be an integer ≥ 1"),
    (["logging.log_every=0"], "logging.log_every=0 must be an integer ≥ 1"),
    (["logging.progress=maybe"], "logging.progress='maybe' must be true or false"),
    (["optimizer.lr=nan"], "optimizer.lr=nan must be a positive finite number"),
    (["optimizer.eps=abc"], "optimizer.eps='abc' must be a finite number ≥ 0"),
    (["optimizer.clip_norm=-1"], "optimizer.clip_norm=-1 must be a finite number ≥ 0 (0 = off)"),
    (["optimizer=sgd", "optimizer.nesterov=2"], "optimizer.nesterov=2 must be true or false"),
    (["optimizer=lbfgs", "optimizer.memory_size=0"], "optimizer.memory_size=0 must be an integer ≥ 1"),
    (["solver=mgrit", "solver.cfactor=1000000000000"], "solver.cfactor=1000000000000 exceeds model.depth=32"),
    (["solver=mgrit", "solver.nrelax=1000000"], "solver.nrelax=1000000 exceeds model.depth=32"),
    (["solver=mgrit", "solver.fwd_iters=33"], "solver.fwd_iters=33 exceeds model.depth=32"),
    (["solver=mgrit", "solver.abs_tol=-1"], "solver.abs_tol=-1 must be a finite number ≥ 0"),
    (["parallel.layers=0"], "parallel.layers=0 must be a positive integer"),
    (["dataset.n_train=1000000000000"], "dataset.n_train=1000000000000 samples need at least"),
    (["dataset.n_val=abc"], "dataset.n_val='abc' must be an integer ≥ 5"),
    (["resume=[1,2]"], "resume=[1, 2] must be a path"),
])
def test_each_bad_value_names_option_value_and_what_is_valid(tmp_path, args, message):
    with pytest.raises(USER_ERRORS) as info:
        run(compose_config(["train.steps=1", *args]), tmp_path)
    assert message in str(info.value)


def test_validate_config_accepts_every_shipped_preset():
    from pathlib import Path

    presets = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "experiment").glob("*.yaml"))
    for name in presets:
        validate_config(compose_config([f"+experiment={name}"]))
    for solver in ("serial", "mgrit"):
        for optimizer in ("adam", "sgd", "lbfgs"):
            validate_config(compose_config([f"solver={solver}", f"optimizer={optimizer}"]))


def test_memory_bound_is_a_lower_bound_not_a_guess():
    """The main job's size passes by orders of magnitude; only sizes beyond the machine's memory fail."""
    validate_config(compose_config(["model.depth=4096", "model.width=64", "train.batch_size=100"]))  # ~0.2 GiB
    with pytest.raises(ConfigError, match="need at least"):
        validate_config(compose_config([f"model.depth={2**40}"]))


@pytest.mark.parametrize("args", [
    ["solver=mgrit", "train.batch_size=10"],  # minibatches: warm_start auto resolves to false
    ["solver=mgrit", "model=conv", "dataset=mnist"],
    ["model=parareal", "model.num_parallel=2", "dataset=regression_peaks"],
])
def test_the_run_builds_model_solver_and_optimizer_once(monkeypatch, request, args):
    """_setup builds each object once: the model, solver and grid validate_config built (on a probe input) are
    completed for the data, not rebuilt; they equal what the builders make for the data directly."""
    import lpt.train.loop as loop
    import lpt.train.validate as validate
    from lpt.train import build_dataset, build_model, make_solver

    if "dataset=mnist" in args:  # MNIST is read from the shared data folder (skip with its reason when absent)
        args = [*args, f"data_dir={request.getfixturevalue('shared_data')}"]
    cfg = compose_config([*TINY, *args])
    calls = {"build_model": 0, "make_solver": 0, "make_optimizer": 0, "from_config": 0}

    def counted(name, module, attr, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        monkeypatch.setattr(module, attr, wrapper)

    for module in (validate, loop):  # every builder wherever the run could call it
        for name in ("build_model", "make_solver", "make_optimizer"):
            if hasattr(module, name):
                counted(name, module, name, getattr(module, name))
    grid_cls = validate.ProcessorGrid
    counted("from_config", grid_cls, "from_config", grid_cls.from_config)
    setup = loop._setup(cfg)
    assert calls == {"build_model": 1, "make_solver": 1, "make_optimizer": 1, "from_config": 1}
    data = build_dataset(cfg)
    full_batch = setup.loop.batch_size in (None, data.x_train.shape[0])
    assert setup.model == build_model(cfg["model"], data)
    assert setup.solver == make_solver(cfg["solver"], full_batch=full_batch)
    assert getattr(setup.solver, "warm_start", full_batch) == full_batch
