"""Layer-sharded mesh training at a depth that is no multiple of ``parallel.layers`` (issue 13 item 1): the layer
stacks of parameters and optimiser state are stored as the solver's chunks (each device its chunk's n_local rows:
its real layers, then zero rows), training equals the single-device run, checkpoints hold the N real layers and
resume bit for bit. Two JAX processes at an uneven depth (N = 17): tests/test_multiprocess_mesh.py."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.mgrit.layout import real_rows
from lpt.parallel.sharded import LayerSharded, canonical_layers, stored_layers, stored_rows, under_layers
from lpt.train import run
from lpt.train.loop import _Run, _setup
from test_layer_sharded import before_and_after_steps, gathered_layer_stacks, single_runs

SHORT = ["solver=mgrit", "dtype=float64", "train.steps=4", "train.eval_every=2", "dataset.n_train=120",
         "dataset.n_val=40", "model.gamma_tik=1e-3", "model.gamma_ddt=1e-4", "model.gamma_class=1e-3"]
CONV = ["model.layer=conv", "model.opening=conv", "dataset=mnist", "model.width=2", "dataset.n_train=24",
        "dataset.n_val=8"]
CASES = {  # name: (overrides, layers)
    # (Adam at N = 37 on 2 chunks: the normal steps 1, 3 and 4 of serial_fallback_37_on_2)
    "lbfgs_70_on_4": (["model.depth=70", "optimizer=lbfgs"], 4),
    # decoupled weight decay and clipping by the global norm: both see the zero rows (zero, and zero gradient)
    "adamw_clip_70_on_4": (["model.depth=70", "optimizer.weight_decay=1e-2", "optimizer.clip_norm=0.05"], 4),
    "conv_adam_9_on_2": ([*CONV, "model.depth=9"], 2),
    # a NaN batch at step 2: the serial step on the stored stack (LayerSharded.exact) takes its place
    "serial_fallback_37_on_2": (["model.depth=37", "train.inject_nan_at_step=2", "train.on_nonfinite=serial"], 2),
}


def checkpoint(path) -> dict[str, np.ndarray]:
    with np.load(path / "checkpoint.npz") as data:
        names = data["names"]
        return {str(name): data[f"leaf_{i:05d}"] for i, name in enumerate(names)}


def layout_of(depth: int, layers: int):
    """The forward layout of the default MGRIT solver of a depth-``depth`` net on ``layers`` chunks (with the serial
    tail: 37 = 32 + 5)."""
    from lpt.mgrit.layout import paired_layouts
    from lpt.mgrit.options import MGRITOptions

    return paired_layouts(depth, MGRITOptions(), MGRITOptions(), layers, tail=True)[0]


class LBFGSHistory(NamedTuple):
    diff_params_memory: dict


def test_stored_layers_lay_out_the_solvers_chunks_and_canonical_layers_take_the_real_ones():
    layout = layout_of(70, 4)  # chunks of 16, 16, 16 and 22 layers, 24 rows each
    assert (layout.stride, layout.last_real, layout.n_local, stored_rows(layout)) == (16, 22, 24, 96)
    layer = np.arange(70.0)
    tree = {"layers": {"K": np.ones((70, 3, 3)) * layer[:, None, None], "b": np.ones((70, 3)) * layer[:, None]},
            "classifier": {"W": np.ones((3, 70))}}
    # an L-BFGS history, named as optax names it (ScaleByLBFGSState.diff_params_memory): the layers on axis 1
    history = LBFGSHistory({"layers": {"K": np.ones((5, 70, 3, 3)) * layer[:, None, None]}})
    stored, stored_history = stored_layers(tree, layout), stored_layers(history, layout)
    assert stored["layers"]["K"].shape == (96, 3, 3) and stored["layers"]["b"].shape == (96, 3)
    assert stored_history.diff_params_memory["layers"]["K"].shape == (5, 96, 3, 3)
    assert stored["classifier"]["W"].shape == (3, 70)  # not a layer stack
    assert isinstance(stored["layers"]["K"], np.ndarray)  # host arrays stay on the host
    # chunk p's rows 24p … : its layers 16p …, then zero rows (8 in chunks 0-2, 2 in the last)
    rows = stored["layers"]["b"][:, 0].reshape(4, 24)
    for p, count in enumerate((16, 16, 16, 22)):
        np.testing.assert_array_equal(rows[p, :count], np.arange(16 * p, 16 * p + count))
        assert not rows[p, count:].any()
    np.testing.assert_array_equal(np.sort(real_rows(layout)), real_rows(layout))
    np.testing.assert_array_equal(stored_history.diff_params_memory["layers"]["K"][:, real_rows(layout)],
                                  history.diff_params_memory["layers"]["K"])
    for a, b in ((tree, stored), (history, stored_history)):
        jax.tree_util.tree_map(np.testing.assert_array_equal, canonical_layers(b, layout), a)
    even = layout_of(64, 4)  # 16 layers per chunk: the stack as it is
    same = {"layers": {"K": tree["layers"]["K"][:64]}}
    assert stored_layers(same, even)["layers"]["K"] is same["layers"]["K"]


@pytest.mark.slow(seconds=20)
@pytest.mark.parametrize("optimizer,depth,layers", [("lbfgs", 70, 4), ("lbfgs", 37, 2)])
def test_each_device_holds_its_rows_of_the_layer_state_at_an_uneven_depth(tmp_path, optimizer, depth, layers):
    """Parameters and optimiser state (L-BFGS's parameters, gradients and histories, which hold the layers on
    axis 1) of the layers: the chunk's rows on each device (N = 37: 16 and 16 + a serial tail of 5, 21 rows each),
    before and after steps; the zero rows stay zero; the start
    line says how the state is split. (Adam's moments take the same path, stored_layers, as every layer leaf; at
    an even depth tests/test_layer_sharded.py checks them.)"""
    cfg = compose_config([*SHORT, f"model.depth={depth}", f"optimizer={optimizer}", "parallel=mesh",
                          f"parallel.layers={layers}"])
    r = _Run(cfg, tmp_path, _setup(cfg))
    layout = layout_of(depth, layers)
    rows, zero = layout.rows, np.setdiff1d(np.arange(stored_rows(layout)), real_rows(layout))
    try:
        assert isinstance(r.s.solver, LayerSharded)
        assert r.s.solver.layouts(depth)[0] == layout
        counts = {37: "16 + 21", 70: "16 + 16 + 16 + 22"}[depth]
        assert r.s.runtime.layout.endswith(
            f"split over the {layers} layer chunks ({counts} layers; {len(zero)} zero rows fill each chunk to the "
            f"{rows} rows " + ("of the largest (its solve's and the serial tail's))" if layout.tail
                               else "its solve uses)"))

        def check(state):
            leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(
                (state.params, state.opt_state)) if under_layers(path) and leaf.ndim > 0]
            histories = 0
            for path, leaf in leaves:
                axis = 1 if leaf.shape[0] != rows * layers else 0
                histories += axis
                assert leaf.shape[axis] == rows * layers, path
                assert leaf.sharding.spec[axis] == "layers", path
                shards = leaf.addressable_shards
                assert len({s.device for s in shards}) == layers
                assert all(s.data.shape[axis] == rows for s in shards), path
                assert not np.take(np.asarray(leaf), zero, axis=axis).any(), path  # the zero rows stay zero
            assert len(leaves) >= 6 and (histories > 0) == (optimizer == "lbfgs")

        before_and_after_steps(r, check)
        # no layer stack moves between the devices, but in the serial branches (the solver's fallback after a
        # divergence: all layers on every chunk, only when it runs)
        hlo = r.train_step.lower(r.state, *r.batch_at(0)).compile().as_text()
        gathered = gathered_layer_stacks(hlo, (depth, stored_rows(layout)))
        assert gathered and all(branch for _, branch in gathered), gathered
    finally:
        r.lock.release()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-device runs (history and final checkpoint), one per configuration."""
    return single_runs(tmp_path_factory, SHORT, lambda path: (read_run(path), checkpoint(path)))


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    """``get(overrides, layers)``: the run directory of a mesh run of SHORT + overrides on ``layers`` chunks, run
    once (a parity case's run is the checkpoint test's uninterrupted run)."""
    cache = {}

    def get(overrides, layers):
        key = (tuple(overrides), layers)
        if key not in cache:
            path = tmp_path_factory.mktemp("mesh")
            run(compose_config([*SHORT, *overrides, "parallel=mesh", f"parallel.layers={layers}"]), path)
            cache[key] = path
        return cache[key]

    return get


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("case", CASES)
def test_uneven_mesh_training_equals_single_device(single, mesh_runs, case, request):
    """Loss history and final parameters and optimiser state to 1e-12 (float64)."""
    overrides, layers = CASES[case]
    if "dataset=mnist" in overrides:  # MNIST from ../shared/data (skipped, with the reason, where it is absent)
        overrides = [*overrides, f"data_dir={request.getfixturevalue('shared_data')}"]
    path = mesh_runs(overrides, layers)
    (ref, ref_ckpt), rec = single(overrides), read_run(path)
    for key in ("loss", "objective", "grad_norm", "lr"):
        np.testing.assert_allclose(rec.history[key], ref.history[key], rtol=1e-12, atol=1e-14, err_msg=key)
    if "optimizer.clip_norm=0.05" in overrides:
        assert rec.history["grad_norm"].min() > 0.05  # every step clipped
    if "train.on_nonfinite=serial" in overrides:
        np.testing.assert_array_equal(rec.history["nonfinite"], [0, 1, 0, 0])
    ckpt = checkpoint(path)
    assert ckpt.keys() == ref_ckpt.keys()
    for name, value in ref_ckpt.items():
        if name.startswith(("params", "opt_state")):  # the real layers only: the shapes of the single run's
            np.testing.assert_allclose(ckpt[name], value, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.slow(seconds=40)
def test_uneven_mesh_checkpoint_resumes_bit_for_bit_on_the_mesh_and_loads_on_one_device(tmp_path, mesh_runs):
    """N = 70 on 4 chunks (16 + 16 + 16 + 22 layers) with L-BFGS: 2 steps, then resumed to 4, equal the
    uninterrupted 4 steps (case lbfgs_70_on_4's run) bit for bit; the checkpoint (the 70 real layers) of a run
    without warm start resumes on one device too."""
    overrides, layers = CASES["lbfgs_70_on_4"]
    mesh = [*SHORT, *overrides, "parallel=mesh", f"parallel.layers={layers}"]
    whole = mesh_runs(overrides, layers)
    run(compose_config([*mesh, "train.steps=2"]), tmp_path / "part")
    assert checkpoint(tmp_path / "part")["params.layers.K"].shape[0] == 70
    resumed = run(compose_config([*mesh, f"resume={tmp_path / 'part'}"]), tmp_path / "elsewhere")
    a, b = read_run(whole).history, read_run(resumed.log_path).history
    for key in ("loss", "objective", "grad_norm", "lr"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ends = checkpoint(resumed.run_dir)
    for name, value in checkpoint(whole).items():
        np.testing.assert_array_equal(ends[name], value, err_msg=name)
    # on one device (without warm-start states, whose layer chunks are the grid's)
    cold = [*SHORT, *overrides, "solver.warm_start=false"]
    run(compose_config([*cold, "parallel=mesh", f"parallel.layers={layers}", "train.steps=2"]), tmp_path / "cold")
    one = run(compose_config([*cold, f"resume={tmp_path / 'cold'}", "train.steps=3"]), tmp_path / "one")
    assert read_run(one.log_path).history["step"][-1] == 3
