"""The memory check before compilation (:mod:`lpt.train.memory`): the estimate against XLA's memory analysis of
the compiled step, and the one line that stops a run that cannot fit (issue 13, item 4)."""

from __future__ import annotations

import sys

import jax
import pytest

from conftest import REPO_ROOT
from lpt.cli.compose import compose_config
from lpt.train import ConfigError, make_optimizer, run
from lpt.train.memory import estimate_step_memory

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from bench_memory import ESTIMATE_CONFIGS, estimate_and_xla  # noqa: E402


@pytest.mark.slow(seconds=21)  # each: 10-40 s here, 130 s for the six
@pytest.mark.parametrize("config", ESTIMATE_CONFIGS)
def test_the_estimate_is_within_35_percent_of_xla(config, shared_data, enable_x64):
    """float32 as users run it (this session enables float64 for other tests)."""
    with enable_x64(False):
        preset, _, overrides = config.partition(":")
        estimate, xla, state = estimate_and_xla(None if preset == "-" else preset,
                                                [*overrides.split(), f"data_dir={shared_data}"])
    # the training state is counted exactly (but for the step counter, step-size scale and rejection count, and
    # what L-BFGS carries from one step to the next besides its gradient: scalars and residual histories)
    carried = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state.carried))
    assert carried < 4096 and (carried > 0) == ("lbfgs" in config)
    assert estimate.state == sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state)) - 3 * 4 - carried
    assert 0.65 < estimate.total / xla < 1.35, (estimate, xla)


@pytest.mark.parametrize("backend, calibration", [("cpu", "cpu"), ("gpu", "gpu"), ("tpu", "gpu")])
def test_the_layer_states_use_the_platforms_calibration(monkeypatch, backend, calibration):
    """The arrays of layer states are those measured on the platform the step will run on (CPU, or the H200's
    for accelerators): the same network, solver and batch give layer states in the ratio of the two tables."""
    import lpt.train.memory as memory
    from lpt.mgrit import MGRITSolver
    from lpt.model import ResNet
    from lpt.model.serial import SerialSolver

    f32 = jax.numpy.float32
    for kind, solver in (("mgrit", MGRITSolver()), ("serial", SerialSolver())):
        for layer, net, xs in (
                ("dense", ResNet(input_shape=(2,), num_outputs=5, depth=16), jax.ShapeDtypeStruct((50, 2), f32)),
                ("conv", ResNet(input_shape=(8, 8, 1), num_outputs=10, depth=16, width=4, layer="conv",
                                         opening="conv"),
                 jax.ShapeDtypeStruct((50, 8, 8, 1), f32))):
            with monkeypatch.context() as m:
                m.setattr(memory.jax, "default_backend", lambda: "cpu")
                on_cpu = estimate_step_memory(net, solver, make_optimizer({"name": "adam", "lr": 1e-3}), xs)
                m.setattr(memory.jax, "default_backend", lambda: backend)
                assert memory.calibration() == calibration
                here = estimate_step_memory(net, solver, make_optimizer({"name": "adam", "lr": 1e-3}), xs)
            assert here.state == on_cpu.state and here.gradient == on_cpu.gradient
            ratio = memory.STATE_ARRAYS[calibration][kind, layer] / memory.STATE_ARRAYS["cpu"][kind, layer]
            assert here.layer_states == pytest.approx(on_cpu.layer_states * ratio, abs=1)  # whole bytes


def test_a_run_that_cannot_fit_stops_before_compiling_with_one_line(monkeypatch, tmp_path, shared_data):
    """indian_pines_512 (full batch of 4000 samples, N = 512, width 200, L-BFGS with 20 pairs) on a 24 GB
    machine: XLA's analysis of its step is 32.9 GB (scripts/bench_memory.py)."""
    import lpt.train.loop as loop

    monkeypatch.setattr(loop, "device_memory", lambda: 24 * 10**9)
    compiled = []

    class Compiling(Exception):
        """Raised by the stand-in for make_train_step: the run got past the check to building its step."""

    def make_train_step(*args, **kwargs):
        compiled.append(1)
        raise Compiling

    monkeypatch.setattr(loop, "make_train_step", make_train_step)
    with pytest.raises(ConfigError) as err:
        run(compose_config(["+experiment=indian_pines_512", f"data_dir={shared_data}"]), tmp_path)
    message = str(err.value)
    assert "\n" not in message and not compiled
    assert message.startswith("the training step needs about 26.4 GiB per device (training state 6.44 GiB, "
                              "layer states 19.9 GiB), more than the 22.4 GiB of this device: choose a smaller "
                              "train.batch_size (now the full training set), more layer ranks (parallel.layers=1)")
    # the same run on a larger device passes the check: its set-up (configuration, data, model, solver, optimiser
    # and the memory check, lpt.train.loop._setup) completes; not the run itself, whose next piece allocates the
    # 6.44 GiB training state before it would compile (5-6 s of this test's time for nothing it checks)
    monkeypatch.setattr(loop, "device_memory", lambda: 64 * 2**30)
    setup = loop._setup(compose_config(["+experiment=indian_pines_512", f"data_dir={shared_data}", "train.steps=1"]))
    assert setup.model.depth == 512 and setup.full_batch and not compiled


def test_the_estimate_counts_each_devices_shard_of_layer_sharded_state(tmp_path):
    """parallel=mesh with 4 layer chunks: parameters, gradient and Adam's moments of the layers are split over
    the chunks (tests/test_layer_sharded.py), and the estimate counts device 0's bytes of the placed state
    exactly; the replicated layout (1 chunk) counts the whole stack."""
    from lpt.parallel.sharded import LayerSharded
    from lpt.train.loop import _Run, _setup

    base = ["solver=mgrit", "dataset.n_train=200", "dataset.n_val=50", "model.depth=32", "train.steps=1"]
    estimates = {}
    for layers in (1, 4):
        cfg = compose_config([*base, "parallel=mesh", f"parallel.layers={layers}"])
        r = _Run(cfg, tmp_path / str(layers), _setup(cfg))
        try:
            s = r.s
            assert isinstance(s.solver, LayerSharded) == (layers > 1)
            x = jax.ShapeDtypeStruct(s.data.x_train.shape, jax.numpy.dtype(s.dtype))  # full batch
            estimate = estimate_step_memory(s.model, s.solver, s.optimizer, x)
            on_device0 = sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree_util.tree_leaves(
                (r.state.params, r.state.opt_state, r.state.solver_state)) if leaf.ndim > 0)
            scalars = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(
                (r.state.params, r.state.opt_state, r.state.solver_state)) if leaf.ndim == 0)
            assert estimate.state == on_device0 + scalars
            assert estimate.gradient == sum(leaf.addressable_shards[0].data.nbytes
                                            for leaf in jax.tree_util.tree_leaves(r.state.params))
            estimates[layers] = estimate
        finally:
            r.lock.release()
    # the layer stacks are most of the parameters: a quarter of them per device, plus the replicated rest
    assert estimates[4].gradient < 0.35 * estimates[1].gradient and estimates[4].state < estimates[1].state


def test_the_estimate_counts_each_mpi_ranks_chunk_of_the_layers():
    """parallel=mpi with layer shards (ChunkLocal): each rank holds half of the layer stacks of the parameters,
    gradient and Adam's moments, and all of the opening and classifier; the estimate counts exactly that."""
    import optax

    from lpt.mgrit import MGRITSolver
    from lpt.model import ResNet
    from lpt.parallel.sharded import ChunkLocal

    class TwoRanks:  # the attributes of an MPIComm that the estimate reads
        layers, data = 2, 1

        def layer_rank(self):
            return 0

    model = ResNet(input_shape=(2,), num_outputs=3, depth=16, width=8)
    x = jax.ShapeDtypeStruct((100, 2), jax.numpy.float32)
    opt = optax.adam(1e-3)
    whole = estimate_step_memory(model, MGRITSolver(comm=TwoRanks()), opt, x)
    chunk = estimate_step_memory(model, ChunkLocal(MGRITSolver(comm=TwoRanks(), local_layers=True)), opt, x)
    params = model.init(jax.random.PRNGKey(0), jax.numpy.float32)
    layers = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params["layers"]))
    assert whole.gradient - chunk.gradient == layers // 2
    assert whole.state - chunk.state == 3 * layers // 2  # parameters and Adam's two moments
    assert whole.layer_states == chunk.layer_states
