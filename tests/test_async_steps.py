"""The loop does not wait for each step: the state is donated to the compiled step, the fault policies
``reduce_lr`` and ``stop`` run inside it, and the steps' flags are read when a row is logged (issue 13, item 6).
Rows of rejected steps are still written, and a run that logs every 5 steps ends where the one that logs every
step ends, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lpt.train.loop as loop_module
from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.train import run
from lpt.train.nonfinite import NonFiniteError
from lpt.train.state import init_state, make_train_step

BASE = ["dataset.n_train=100", "dataset.n_val=50", "model.depth=4", "train.steps=10", "train.eval_every=5",
        "train.checkpoint_every=100", "logging.progress=false"]
METRICS = ("loss", "objective", "grad_norm", "train_acc", "lr", "rejected", "nonfinite")


def _leaves(path):
    with np.load(path / "checkpoint.npz") as ckpt:
        return [ckpt[k] for k in sorted(ckpt.files) if k.startswith("leaf_")], int(ckpt["meta_step"])


class _Watched:
    """A step's output value that records when the host reads it: (step it came from, steps dispatched then)."""

    def __init__(self, value, step, calls, reads):
        self.value, self.step, self.calls, self.reads = value, step, calls, reads

    def _read(self):
        self.reads.append((self.step, len(self.calls)))
        return np.asarray(self.value)

    def __array__(self, dtype=None, copy=None):
        return self._read() if dtype is None else self._read().astype(dtype)

    def __bool__(self):
        return bool(self._read())

    def __float__(self):
        return float(self._read())

    def block_until_ready(self):
        self._read()
        return self


def test_the_loop_reads_a_step_only_when_it_logs_a_row(tmp_path, monkeypatch):
    """Every metric and statistic the step returns records when the host reads it: with rows every 5 steps,
    step k's values are read at step 5 or 10 only (and step 1's loss when it is timed), never at the step."""
    calls, reads = [], []
    real = loop_module.make_train_step

    def make(*args, **kwargs):
        step = real(*args, **kwargs)

        def watched(state, x, y):
            calls.append(1)
            state, metrics, stats = step(state, x, y)
            wrap = {k: _Watched(v, len(calls), calls, reads) for k, v in metrics.items()}
            return state, wrap, {k: _Watched(v, len(calls), calls, reads) for k, v in stats.items()}

        return watched

    monkeypatch.setattr(loop_module, "make_train_step", make)
    run(compose_config([*BASE, "solver=mgrit", "solver.cfactor=2", "logging.log_every=5", "train.eval_every=10"]),
        tmp_path)
    assert len(calls) == 10
    read_steps = {step for step, _ in reads}
    assert read_steps == set(range(1, 11))  # every step's flag was looked at ...
    late = [(step, at) for step, at in reads if at % 5 and (step, at) != (1, 1)]
    assert not late, f"(step, steps dispatched) of reads between rows: {late}"  # ... at the rows only
    np.testing.assert_array_equal(read_run(tmp_path).history["step"], [5, 10])


@pytest.fixture(scope="module")
def every_step(tmp_path_factory):
    """The run with a NaN step 4 (default policy reduce_lr) that logs every step."""
    path = tmp_path_factory.mktemp("every")
    run(compose_config([*BASE, "train.inject_nan_at_step=4"]), path)
    return path


def test_rows_every_five_steps_keep_the_rejected_step_and_the_trajectory(tmp_path, every_step):
    run(compose_config([*BASE, "train.inject_nan_at_step=4", "logging.log_every=5"]), tmp_path)
    a, b = read_run(every_step).history, read_run(tmp_path).history
    np.testing.assert_array_equal(b["step"], [4, 5, 10])  # the rejected step's row, then every fifth
    for key in (*METRICS, "val_acc"):
        np.testing.assert_array_equal(b[key], a[key][[3, 4, 9]], err_msg=key)
    assert b["rejected"].tolist() == [1, 0, 0]
    np.testing.assert_array_equal(b["lr"] / a["lr"][0], [1, 0.5, 0.5])  # scaled inside the step
    ckpt_a, ckpt_b = _leaves(every_step), _leaves(tmp_path)
    assert ckpt_a[1] == ckpt_b[1] == 10
    for x, y in zip(ckpt_a[0], ckpt_b[0]):
        np.testing.assert_array_equal(x, y)


def test_stop_found_at_the_next_row_saves_the_state_before_the_fault(tmp_path):
    """on_nonfinite=stop with rows every 5 steps: the NaN at step 2 is found at step 5; steps 3–5 left the
    state alone, so the checkpoint is the one the run logging every step writes (the state after step 1)."""
    fault = [*BASE, "train.inject_nan_at_step=2", "train.on_nonfinite=stop"]
    for sub, extra in (("every", []), ("five", ["logging.log_every=5"])):
        with pytest.raises(NonFiniteError, match=r"step 2 produced non-finite values .* \(step 1\) is checkpointed"):
            run(compose_config([*fault, *extra]), tmp_path / sub)
    a, b = read_run(tmp_path / "every").history, read_run(tmp_path / "five").history
    np.testing.assert_array_equal(a["step"], [1, 2])
    np.testing.assert_array_equal(b["step"], [2])
    for key in METRICS:
        np.testing.assert_array_equal(b[key], a[key][1:], err_msg=key)
    (la, sa), (lb, sb) = _leaves(tmp_path / "every"), _leaves(tmp_path / "five")
    assert sa == sb == 1
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def test_a_donated_step_reuses_the_state_buffers_and_computes_the_same():
    from lpt.model import ResNet
    from lpt.train.solver import SerialSolver

    model = ResNet(input_shape=(2,), num_outputs=3, depth=8, width=4)
    opt = optax.adam(1e-2)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 2), jnp.float32)
    y = jnp.arange(16, dtype=jnp.int32) % 3

    def fresh():
        return init_state(model.init(jax.random.PRNGKey(0), jnp.float32), opt, (), jnp.asarray(1.0, jnp.float32),
                          count_rejections=True)

    kept, donated = (make_train_step(model, SerialSolver(), opt, lr=1e-2, line_search=False, donate=d)
                     for d in (False, True))
    state = fresh()
    memory = donated.lower(state, x, y).compile().memory_analysis()
    state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state))
    assert memory.alias_size_in_bytes >= state_bytes  # the whole state is updated in place
    assert kept.lower(state, x, y).compile().memory_analysis().alias_size_in_bytes == 0
    a = kept(state, x, y)[0]
    b = donated(state, x, y)[0]
    assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
