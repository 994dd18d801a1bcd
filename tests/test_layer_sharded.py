"""Layer-sharded training on the device mesh (issue 13 item 1): each device holds its chunk's layer parameters,
their gradient and optimiser state, and the training steps equal the single-device ones."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.parallel.sharded import LayerSharded, layer_axis, stored_axis
from lpt.train import run
from lpt.train.loop import _Run, _setup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_sharded_memory import all_gathers  # noqa: E402

SHORT = ["solver=mgrit", "dtype=float64", "train.steps=6", "train.eval_every=3", "dataset.n_train=200",
         "dataset.n_val=50"]


def _layer_leaves(tree):
    """(path, leaf) of every leaf under a "layers" key."""
    return [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if any(getattr(key, "key", None) == "layers" for key in path)]


@pytest.mark.slow(seconds=20)
def test_each_device_holds_only_its_chunk_of_the_layer_state(tmp_path):
    """Parameters, Adam moments and warm-start states of the layers are split in 4 along the layers, before and
    after steps (the step keeps the layout, so it compiles once); the matrices of opening and classifier are split
    too, their vectors replicated."""
    cfg = compose_config([*SHORT, "parallel=mesh", "parallel.layers=4", "model.depth=32"])
    r = _Run(cfg, tmp_path, _setup(cfg))
    try:
        assert isinstance(r.s.solver, LayerSharded)

        def check(state):
            layer = _layer_leaves((state.params, state.opt_state))
            assert len(layer) == 6  # K and b of the parameters, Adam's mu and nu
            for path, leaf in layer:
                assert leaf.sharding.spec == P("layers"), path
                shards = leaf.addressable_shards
                assert len({s.device for s in shards}) == 4
                assert all(s.data.shape[0] == 8 for s in shards), path  # 32 layers / 4 chunks
            # the other matrices are split too (along their first axis with a multiple of 4), vectors replicated
            for path, leaf in jax.tree_util.tree_leaves_with_path((state.params["opening"],
                                                                   state.params["classifier"])):
                axis = stored_axis(path, leaf.shape, 32, 4)
                assert (axis is None) == (leaf.ndim < 2) and leaf.sharding.is_fully_replicated == (axis is None)
                if axis is not None:
                    assert leaf.addressable_shards[0].data.shape[axis] == leaf.shape[axis] // 4, path
            warm = state.solver_state.ys
            assert warm.sharding.spec[0] == "layers" and warm.addressable_shards[0].data.shape[0] == warm.shape[0] // 4

        before_and_after_steps(r, check)
        # no layer stack moves between the devices, but in the solver's serial fallback after a divergence
        hlo = r.train_step.lower(r.state, *r.batch_at(0)).compile().as_text()
        gathered = gathered_layer_stacks(hlo, (32,))
        assert gathered and all(branch for _, branch in gathered), gathered
        assert any(not branch for _, _, branch in all_gathers(hlo))  # states move between chunks outside branches
    finally:
        r.lock.release()


def gathered_layer_stacks(hlo: str, rows: tuple[int, ...]) -> list[tuple[tuple[int, ...], bool]]:
    """(shape, within a conditional's branch) of the all-gathers in compiled HLO text whose result has ``rows``
    entries on its first axis."""
    return [(shape, branch) for shape, _, branch in all_gathers(hlo) if shape[:1] and shape[0] in rows]


def before_and_after_steps(r: _Run, check) -> None:
    """``check(state)`` of run ``r``'s state before and after 3 steps, none rejected, the step compiled once."""
    check(r.state)
    state = r.state
    for step in range(3):
        state, metrics, _ = r.train_step(state, *r.batch_at(step))
    check(state)
    assert not bool(metrics["rejected"])
    assert r.train_step._cache_size() == 1, "the step compiled again"


def single_runs(tmp_path_factory, base: list[str], read=read_run):
    """``get(overrides)``: ``read(run directory)`` of a single-device run of ``base`` + overrides, run once."""
    cache = {}

    def get(overrides):
        key = tuple(overrides)
        if key not in cache:
            path = tmp_path_factory.mktemp("single")
            run(compose_config([*base, *overrides]), path)
            cache[key] = read(path)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-device references, one per configuration."""
    return single_runs(tmp_path_factory, SHORT)


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("overrides,layers", [
    # L-BFGS: its line search evaluates the objective and gradient per chunk at trial points
    (["optimizer=lbfgs"], 2),
    # adaptive control whose first bias check switches to serial: the cosine and the serial gradient per chunk
    (["solver.control=adaptive", "solver.control_every=2", "solver.control_min_cos=0.999999",
      "solver.control_tightenings=0"], 4),
    # Adam with both regularisations (added on the whole stack, outside the chunks) at depths that are no multiple
    # of the chunks (N = 37 on 2, N = 70 on 4 with weight decay and clipping): tests/test_mesh_uneven.py
])
def test_layer_sharded_training_equals_single_device(tmp_path, single, overrides, layers):
    result = run(compose_config([*SHORT, *overrides, "parallel=mesh", f"parallel.layers={layers}"]), tmp_path)
    rec, ref = read_run(result.log_path), single(overrides)
    for key in ("loss", "objective", "grad_norm", "lr", "train_acc"):
        np.testing.assert_allclose(rec.history[key], ref.history[key], rtol=1e-10, atol=1e-14, err_msg=key)
    np.testing.assert_allclose(rec.history["val_acc"], ref.history["val_acc"])
    for key in ("fwd_residual", "bwd_residual", "mode"):
        np.testing.assert_allclose(rec.mgrit[key], ref.mgrit[key], rtol=1e-9, atol=1e-13, err_msg=key)
    # the bias check's cosine sums its dot products in float32 (lpt.mgrit.control.cosine): to an ulp of float32
    np.testing.assert_allclose(rec.mgrit["grad_cos"], ref.mgrit["grad_cos"], rtol=2e-7, err_msg="grad_cos")
    if "solver.control=adaptive" in overrides:  # the check fired and the run went serial
        assert np.nanmax(rec.mgrit["mode"]) == 1 and np.isfinite(rec.mgrit["grad_cos"]).any()


def test_layer_axis_is_the_depth_axis_under_layers():
    """Axis 0 of a layer stack, axis 1 of an L-BFGS history (optax's own paths), also where the history's length
    equals the depth (axis 0 then has ``depth`` entries too)."""
    layers = jax.tree_util.DictKey("layers")
    other = jax.tree_util.DictKey("classifier")
    assert layer_axis((layers,), (32, 8, 8), 32, 4) == 0
    params = {"layers": {"K": np.zeros((32, 8, 8))}, "classifier": {"W": np.zeros((8, 5))}}
    axes = {jax.tree_util.keystr(path): layer_axis(path, leaf.shape, 32, 4) for path, leaf in
            jax.tree_util.tree_leaves_with_path(optax.lbfgs(memory_size=32).init(params))}
    assert axes["[0].diff_params_memory['layers']['K']"] == axes["[0].diff_updates_memory['layers']['K']"] == 1
    assert axes["[0].params['layers']['K']"] == axes["[2].grad['layers']['K']"] == 0
    assert axes["[0].diff_params_memory['classifier']['W']"] is None
    assert layer_axis((other,), (32, 8), 32, 4) is None
    assert layer_axis((layers,), (70, 8), 70, 4) is None  # not a multiple of the chunks: replicated
    assert layer_axis((layers,), (8,), 32, 4) is None
    assert stored_axis((layers,), (32, 8, 8), 32, 4) == 0
    assert stored_axis((other,), (6, 8), 32, 4) == 1 and stored_axis((other,), (8,), 32, 4) is None
    # N = 70 on 4 chunks: the stored stack has 4 · 24 = 96 rows (the solver's n_local per chunk), split so
    assert stored_axis((layers,), (96, 8), 96, 4) == 0 and stored_axis((other,), (6, 8), 96, 4) == 1
    assert stored_axis((layers,), (70, 8), 96, 4) is None  # not the stored stack
