"""Numerical faults: a step with NaN/inf is rejected inside the compiled step, logged, and the run goes on from
the last good state as ``train.on_nonfinite`` says (reduce_lr / serial / stop). Faults are injected with the
test hook ``train.inject_nan_at_step`` (that step's inputs are NaN for the configured solver)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import load_checkpoint, read_run, save_checkpoint
from lpt.train import TrainState, run
from lpt.train.nonfinite import NonFiniteError

BASE = ["dataset.n_train=100", "dataset.n_val=50", "model.depth=4", "train.steps=10", "train.eval_every=5",
        "train.checkpoint_every=100", "logging.progress=false"]
METRICS = ("loss", "objective", "grad_norm", "train_acc")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The history of the same run without a fault."""
    path = tmp_path_factory.mktemp("reference")
    run(compose_config(BASE), path)
    return read_run(path).history


@pytest.fixture(scope="module")
def reduce_lr_run(tmp_path_factory):
    """The run with a NaN step 4 under the default policy reduce_lr: (run directory, warnings logged)."""
    path = tmp_path_factory.mktemp("reduce_lr")
    handler = _Collect()
    logging.getLogger("lpt").addHandler(handler)
    try:
        run(compose_config([*BASE, "train.inject_nan_at_step=4"]), path)
    finally:
        logging.getLogger("lpt").removeHandler(handler)
    return path, "\n".join(handler.messages)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_reduce_lr_rejects_the_step_keeps_the_state_and_halves_the_step_size(reduce_lr_run, reference):
    run_dir, warnings = reduce_lr_run
    rec = read_run(run_dir)
    h = rec.history
    np.testing.assert_array_equal(h["step"], np.arange(1, 11))
    assert h["step"].dtype == np.int64 and h["loss"].dtype == np.float64
    np.testing.assert_array_equal(h["rejected"], np.eye(10)[3])
    np.testing.assert_array_equal(h["nonfinite"], np.eye(10)[3])
    assert np.isnan(h["loss"][3]) and np.all(np.isfinite(np.delete(h["loss"], 3)))
    # rejected: step 5 starts from the state after step 3, i.e. where the reference's step 4 started
    for key in METRICS:
        np.testing.assert_array_equal(h[key][:3], reference[key][:3], err_msg=key)
        assert h[key][4] == reference[key][3], key
    assert h["lr"][0] == pytest.approx(0.01)
    np.testing.assert_array_equal(h["lr"] / h["lr"][0], [1] * 4 + [0.5] * 6)
    assert rec.attrs["status"] == "completed"
    assert "step 4 rejected: non-finite values" in warnings
    # the reduced step size and the count of consecutive rejections (0 again after step 5) are part of the
    # checkpointed state (its last two leaves: ``carried`` holds none without L-BFGS)
    assert TrainState._fields[-3:] == ("lr_scale", "rejections", "carried")
    with np.load(run_dir / "checkpoint.npz") as ckpt:
        leaves = [ckpt[k] for k in sorted(ckpt.files) if k.startswith("leaf_")]
        names = list(ckpt["names"])
    assert leaves[-2].dtype == np.float32 and leaves[-2] == np.float32(0.5)
    assert leaves[-1].dtype == np.int32 and leaves[-1] == 0
    # leaves carry their paths in the training state, in the .npz and in the HDF5 log's mirror
    assert len(names) == len(leaves) and names[-2:] == ["lr_scale", "rejections"] and "step" in names
    assert {"params.layers.K", "params.layers.b", "params.classifier.W"} <= set(names)
    assert any(n.startswith("opt_state.") for n in names)
    with h5py.File(next(run_dir.glob("*.h5")), "r") as f:
        mirror = f["checkpoint"]
        assert list(mirror.keys()) == [f"{i:05d} {n}" for i, n in enumerate(names)]
        for i, (n, leaf) in enumerate(zip(names, leaves)):
            np.testing.assert_array_equal(mirror[f"{i:05d} {n}"][()], leaf)


def test_checkpoint_of_another_configuration_names_the_leaf_that_differs(tmp_path):
    """Resuming with a state of another shape refuses in one line that names the leaf by its path."""
    state = {"params": {"layers": {"K": np.zeros((4, 3, 3), np.float32)}}, "step": np.int32(7)}
    save_checkpoint(tmp_path / "checkpoint.npz", state, {"step": 7})
    loaded, meta = load_checkpoint(tmp_path, state)
    assert int(meta["step"]) == 7 and loaded["params"]["layers"]["K"].shape == (4, 3, 3)
    other = {"params": {"layers": {"K": np.zeros((8, 3, 3), np.float32)}}, "step": np.int32(0)}
    with pytest.raises(ValueError, match=r"array 0 \(params\.layers\.K\) has shape \(4, 3, 3\) float32, "
                                         r"this configuration needs \(8, 3, 3\) float32"):
        load_checkpoint(tmp_path, other)


def test_resume_after_a_rejected_step_is_bitwise(tmp_path, reduce_lr_run):
    """The step-size scale travels in the checkpoint: stop after the rejection, resume, compare."""
    fault = [*BASE, "train.inject_nan_at_step=4"]
    run(compose_config([*fault, "train.steps=6"]), tmp_path / "part")
    resumed = run(compose_config([*fault, f"resume={tmp_path / 'part'}"]), tmp_path / "elsewhere")
    a, b = read_run(reduce_lr_run[0]).history, read_run(resumed.log_path).history
    for key in (*METRICS, "lr", "rejected"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_serial_policy_recomputes_the_step(tmp_path, reference, caplog):
    """solver=serial with the fault on the configured solver only: the serial recomputation is the step the
    uninterrupted run took, so the whole history is the reference's, with the fault flagged. To float32's rounding,
    not bit for bit: the two runs compile different programs (the fault policy is part of the step; step 4 is
    the guard's own program), and XLA may round them apart (by up to 2.4e-7 in steps 3-9 of the loss with
    --xla_cpu_parallel_codegen_split_count=1, tests/conftest.py)."""
    with caplog.at_level(logging.WARNING, logger="lpt"):
        run(compose_config([*BASE, "train.inject_nan_at_step=4", "train.on_nonfinite=serial"]), tmp_path)
    h = read_run(tmp_path).history
    for key in (*METRICS, "lr", "val_acc"):
        np.testing.assert_allclose(h[key], reference[key], rtol=2e-6, atol=0, err_msg=key)
    np.testing.assert_array_equal(h["nonfinite"], np.eye(10)[3])
    assert not h["rejected"].any()
    assert "step 4: non-finite values" in caplog.text and "recomputed with the serial solver" in caplog.text


def test_serial_policy_rescues_an_mgrit_step(tmp_path):
    run(compose_config([*BASE, "solver=mgrit", "solver.cfactor=2", "train.steps=5", "train.inject_nan_at_step=2",
                        "train.on_nonfinite=serial"]), tmp_path)
    h = read_run(tmp_path).history
    np.testing.assert_array_equal(h["nonfinite"], [0, 1, 0, 0, 0])
    assert not h["rejected"].any() and np.all(np.isfinite(h["loss"])) and h["loss"][-1] < h["loss"][0]


def test_stop_policy_checkpoints_the_last_good_state(tmp_path, reference):
    with pytest.raises(NonFiniteError, match=r"step 4 produced non-finite values .* train.on_nonfinite=stop"):
        run(compose_config([*BASE, "train.inject_nan_at_step=4", "train.on_nonfinite=stop"]), tmp_path)
    rec = read_run(tmp_path)
    assert rec.attrs["status"] == "failed: NonFiniteError"
    np.testing.assert_array_equal(rec.history["step"], [1, 2, 3, 4])
    with np.load(tmp_path / "checkpoint.npz") as ckpt:
        assert int(ckpt["meta_step"]) == 3
    # resuming without the fault continues exactly like the run that never had it
    resumed = run(compose_config([*BASE, f"resume={tmp_path}"]), tmp_path / "elsewhere")
    h = read_run(resumed.log_path).history
    for key in METRICS:
        np.testing.assert_array_equal(h[key], reference[key], err_msg=key)


def test_consecutive_rejections_stop_the_run(tmp_path):
    """A step size so large that the parameters overflow: every later gradient is NaN whatever the step size,
    so the steps are rejected one after another until train.max_rejections ends the run."""
    with pytest.raises(NonFiniteError, match=r"3 consecutive rejected steps \(train.max_rejections\)"):
        run(compose_config([*BASE, "optimizer=sgd", "optimizer.lr=1e38", "train.max_rejections=3"]), tmp_path)
    h = read_run(tmp_path).history
    assert h["rejected"][-3:].tolist() == [1, 1, 1]
    np.testing.assert_array_equal(h["lr"][-3:] / h["lr"][-3], [1, 0.5, 0.25])
    state_step = int(np.load(tmp_path / "checkpoint.npz")["meta_step"])
    assert state_step == h["step"][-1] - 1


def test_lpt_train_exits_3_with_one_line_on_a_numerical_stop(tmp_path):
    exe = Path(sys.executable).with_name("lpt-train")
    proc = subprocess.run([str(exe), *BASE, "train.inject_nan_at_step=2", "train.on_nonfinite=stop",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "lpt-train: numerical failure: step 2 produced non-finite values" in proc.stderr
    assert "Traceback" not in proc.stderr
    with np.load(tmp_path / "checkpoint.npz") as ckpt:
        assert int(ckpt["meta_step"]) == 1


def test_an_lbfgs_step_with_a_nonfinite_batch_evaluates_it_itself(tmp_path):
    """L-BFGS steps take the last line search's evaluation at their parameters (lpt.train.state.Carried); the step
    whose batch the hook makes NaN evaluates that batch itself, so reduce_lr rejects it as with any optimiser, and
    the step after it starts where it started (its metrics are the fault-free run's step 4's)."""
    lbfgs = [*BASE, "optimizer=lbfgs", "solver=serial"]
    run(compose_config(lbfgs), tmp_path / "reference")
    run(compose_config([*lbfgs, "train.inject_nan_at_step=4"]), tmp_path / "fault")
    ref, h = read_run(tmp_path / "reference").history, read_run(tmp_path / "fault").history
    np.testing.assert_array_equal(h["rejected"], np.eye(10)[3])
    for key in METRICS:
        np.testing.assert_array_equal(h[key][:3], ref[key][:3], err_msg=key)
        np.testing.assert_allclose(h[key][4], ref[key][3], rtol=1e-6, err_msg=key)
