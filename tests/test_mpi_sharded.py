"""Layer-sharded parameters on MPI ranks (issue 13 item 1, ``parallel=mpi``): each rank keeps only its chunk's real
layer parameters and optimiser state (on a depth that MGRIT pads the last rank fewer, no pad layer anywhere), and
training equals the one-process run (float64, 1e-10) with Adam, γ_tik, γ_ddt (a difference across the chunk
boundary), γ_class and gradient clipping; the checkpoint holds the whole state. L-BFGS too: its two-loop
recursion and zoom line search take their inner products summed over the chunks (``lpt.parallel.products``), and
its histories (layer axis 1) are split, gathered and resumed like the parameters."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.mgrit import MGRITSolver
from lpt.model import ResNet
from lpt.parallel.comm import SingleComm
from lpt.parallel.grid import ProcessorGrid
from lpt.parallel.runtime import Runtime
from lpt.parallel.products import chunk_norm, chunk_products
from lpt.parallel.sharded import ChunkLocal, chunk_regularization, layer_specs, on_mesh
from lpt.train import linesearch, run
from lpt.train.state import strong_types
from test_parallel_comm import mpirun

HERE = Path(__file__).resolve().parent
RUN = ["solver=mgrit", "dtype=float64", "model.depth=16", "model.gamma_tik=1e-3", "model.gamma_ddt=1e-2",
       "model.gamma_class=1e-3", "optimizer.clip_norm=0.5", "train.steps=6", "train.eval_every=3",
       "dataset.n_train=200", "dataset.n_val=50", "logging.progress=false",
       # step 2's inputs are NaN: it is rejected and recomputed serially (on MPI from the gathered layers)
       "train.on_nonfinite=serial", "train.inject_nan_at_step=2"]


def _checkpoint(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoint.npz") as ckpt:
        return {name: ckpt[f"leaf_{i:05d}"] for i, name in enumerate(ckpt["names"])}


@pytest.mark.slow(seconds=85)
def test_sharded_mpi_training_equals_one_process(tmp_path):
    """2 ranks, depth 13: chunks of 8 and 5 real layers in arrays of 8 steps (the last rank's 3 identity steps exist
    only inside the solve): tests/mpi/sharded_check.py asserts shapes, the chunked regularisation (γ_ddt across the
    chunk boundary and up to the last real layer) and norm, gather and checkpoint blocks; histories (with a
    serially recomputed step) and final states equal one process's.

    One depth: rank 0's full chunk of 8 is the even layout's, and rank 1's 5 of 8 add the padding (an even depth,
    16, ran no further code; ``lpt-train`` under MPI on even chunks is compared with one process in
    tests/test_parallel_train.py and tests/test_mpi_resume.py)."""
    depth, held = 13, "layers 0..7 of 13 (padded to 16)|layers 8..12 of 13 (padded to 16)"
    args = [f"model.depth={depth}", *RUN[3:]]
    proc = mpirun(2, HERE / "mpi" / "sharded_check.py", str(tmp_path / "mpi"), str(depth), *args, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok") == 2, proc.stdout[-2000:]
    assert all(part in proc.stdout for part in held.split("|")), proc.stdout[-2000:]
    run(compose_config([*RUN[:2], *args]), tmp_path / "single")
    rec, ref = read_run(tmp_path / "mpi"), read_run(tmp_path / "single")
    assert (ref.history["grad_norm"] > 0.5).all(), "the clipping is active at every step"
    np.testing.assert_array_equal(rec.history["step"][rec.history["nonfinite"] == 1], [2])
    for key in ("loss", "objective", "grad_norm", "lr", "train_acc"):
        np.testing.assert_allclose(rec.history[key], ref.history[key], rtol=1e-10, atol=1e-14, err_msg=key)
    np.testing.assert_array_equal(rec.history["val_acc"], ref.history["val_acc"])
    for key in ("fwd_residual", "bwd_residual"):
        np.testing.assert_allclose(rec.mgrit[key], ref.mgrit[key], rtol=1e-9, atol=1e-13, err_msg=key)
    # the checkpoint written by rank 0 holds the whole stack, the Adam moments and the warm-start states
    mine, theirs = _checkpoint(tmp_path / "mpi"), _checkpoint(tmp_path / "single")
    assert mine["params.layers.K"].shape[0] == depth and mine.keys() - {"solver_state.ys", "solver_state.ybars",
                                                                    "solver_state.valid"} == theirs.keys() - {
        "solver_state.ys", "solver_state.ybars", "solver_state.valid"}
    for name, value in theirs.items():
        if name.startswith(("params", "opt_state")):
            np.testing.assert_allclose(mine[name], value, rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.slow(seconds=120)
def test_lbfgs_on_sharded_mpi_layers_equals_one_process_and_resumes(tmp_path):
    """L-BFGS on 2 ranks, depth 33 (32 by MGRIT and a serial tail of 1: chunks of 16 and 16 + 1 real layers, the
    tail's on the last rank): each rank holds its chunk of the layers and of the L-BFGS histories; 4 steps, then a
    resume to 6, give the one-process run's history (float64, 1e-10), and the checkpoint after 4 steps holds the
    whole histories (layer axis 1 joined), equal to one process's."""
    args = ["solver=mgrit", "dtype=float64", "model.depth=33", "model.gamma_ddt=1e-2", "optimizer=lbfgs",
            "optimizer.memory_size=3", "train.eval_every=2", "dataset.n_train=200", "dataset.n_val=50",
            "logging.progress=false"]
    exe = Path(sys.executable).with_name("lpt-train")
    out, mine = tmp_path / "mpi", {}
    for steps, resume in ((4, []), (6, [f"resume={tmp_path / 'mpi'}"])):
        proc = mpirun(2, exe, *args, f"train.steps={steps}", "parallel=mpi", "parallel.layers=2",
                      f"hydra.run.dir={out}", *resume, timeout=400)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "split over the 2 layer ranks (16 + 17 layers" in proc.stdout + proc.stderr
        mine = mine or _checkpoint(out)
    run(compose_config([*args, "train.steps=4"]), tmp_path / "single4")
    run(compose_config([*args, "train.steps=6"]), tmp_path / "single")
    rec, ref = read_run(out), read_run(tmp_path / "single")
    assert len(rec.history["step"]) == 6 and np.ptp(ref.history["lr"]) > 0, "the line search's steps vary"
    for key in ("loss", "objective", "grad_norm", "lr"):
        np.testing.assert_allclose(rec.history[key], ref.history[key], rtol=1e-10, atol=1e-14, err_msg=key)
    theirs = _checkpoint(tmp_path / "single4")
    history = "opt_state.0.diff_params_memory.layers.K"
    assert mine[history].shape == theirs[history].shape == (3, 33, 8, 8)
    assert np.abs(theirs[history]).max() > 1e-6, "the histories are filled"
    for name, value in theirs.items():
        if name.startswith(("params", "opt_state")):
            np.testing.assert_allclose(mine[name], value, rtol=1e-9, atol=1e-13, err_msg=name)


def _quartic(sum_layers):
    """f(θ) = Σ ½θ² + ½θ⁴ over all leaves, the layer leaves' part reduced by ``sum_layers`` (over the chunks), its
    gradient θ + 2θ³ leaf by leaf (a custom VJP, as the solver's objective has)."""
    def part(leaves):
        return sum(jax.numpy.sum(0.5 * a * a + 0.5 * a ** 4) for a in leaves)

    @jax.custom_vjp
    def f(p):
        return sum_layers(part(jax.tree_util.tree_leaves(p["layers"]))) + part(
            jax.tree_util.tree_leaves({k: v for k, v in p.items() if k != "layers"}))

    f.defvjp(lambda p: (f(p), jax.tree_util.tree_map(lambda a: a + 2 * a ** 3, p)),
             lambda grad, g: (jax.tree_util.tree_map(lambda a: g * a, grad),))
    return f


def _lbfgs_steps(params, products, sum_layers, steps=3):
    """``steps`` L-BFGS steps in one loop (the update compiled once): the last parameters."""
    opt, f = linesearch.lbfgs(1.0, 2), _quartic(sum_layers)

    def step(_, carry):
        params, state = carry
        value, grad = jax.value_and_grad(f)(params)
        with products():
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(params, updates), state

    return jax.lax.fori_loop(0, steps, step, (params, strong_types(opt.init(params))))[0]


def test_chunk_products_make_lbfgs_on_four_chunks_equal_the_whole_stack():
    """lpt's L-BFGS (optax's, with the line search of :mod:`lpt.train.linesearch`), 3 steps of a quartic
    objective, per chunk under ``shard_map`` (4
    chunks of a 16-layer stack) inside :func:`chunk_products`: the whole stack's iterates (float64, 1e-12). The same
    per-chunk steps without it (each chunk's own inner products) go elsewhere, and a block in which optax computes
    no inner product is refused."""
    model = ResNet(input_shape=(2,), num_outputs=5, depth=16, width=4)
    params = model.init(jax.random.PRNGKey(3), np.float64)
    grid = ProcessorGrid("mesh", layers=4)
    comm = grid.comm()
    specs = layer_specs(params, 16, 4)
    whole = jax.jit(lambda p: _lbfgs_steps(p, contextlib.nullcontext, lambda v: v))(params)
    f = _quartic(lambda v: v)
    assert float(f(whole)) < 0.5 * float(f(params)), "the steps descend"
    chunked = [jax.jit(on_mesh(lambda p, c=c: _lbfgs_steps(p, c, comm.layer_sum), grid, (specs,), specs))(params)
               for c in (lambda: chunk_products(comm), contextlib.nullcontext)]
    for a, b in zip(*map(jax.tree_util.tree_leaves, (chunked[0], whole))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    apart = max(float(np.abs(a - b).max()) for a, b in zip(*map(jax.tree_util.tree_leaves, (chunked[1], whole))))
    assert apart > 1e-4, apart
    with pytest.raises(RuntimeError, match="no inner product"):
        with chunk_products(comm):
            pass


def _runtime_for(layers: int) -> tuple[Runtime, MGRITSolver]:
    """An MPI runtime of ``layers`` ranks without MPI (its layout decisions only)."""
    comm = SingleComm(layers=layers)
    return Runtime(ProcessorGrid("mpi", layers=layers), comm), MGRITSolver(comm=comm)


@pytest.mark.parametrize("layers,depth,sharded,says", [
    (2, 16, True, "split over the 2 layer ranks (8 layers each)"),
    (2, 100, True, "split over the 2 layer ranks (48 + 52 layers; identity steps up to 52 per rank are "
                          "added inside the solve only)"),
    (2, 13, True, "split over the 2 layer ranks (8 + 5 layers; identity steps up to 8 per rank"),
    (4, 24, True, "split over the 4 layer ranks (4 + 4 + 4 + 12 layers; identity steps up to 12 per rank"),
])
def test_which_mpi_runs_shard_their_layers(layers, depth, sharded, says):
    runtime, solver = _runtime_for(layers)
    runtime, solver = runtime.shard_layers(solver, depth)
    assert runtime.layer_shards == sharded and isinstance(solver, ChunkLocal) == sharded
    assert says in runtime.layout
    if sharded:
        assert solver.local_layers and solver.on_divergence == "serial"  # the wrapped solver's attributes
        assert (runtime.chunk_rows, runtime.depth) == (solver.layouts(depth)[0].stride, depth)


def test_chunked_regularisation_and_norm_equal_the_whole_stacks_on_four_chunks():
    """The halo regularisation and the chunked norm on 4 chunks (middle chunks receive a halo and send its
    gradient back), per chunk under ``shard_map`` with the mesh's collectives: the whole stack's value and gradient
    (float64, 1e-13)."""
    model = ResNet(input_shape=(2,), num_outputs=5, depth=16, width=4, gamma_tik=1e-3, gamma_ddt=1e-2,
                   gamma_class=1e-3)
    params = model.init(jax.random.PRNGKey(1), np.float64)
    grid = ProcessorGrid("mesh", layers=4)
    comm = grid.comm()
    specs = layer_specs(params, 16, 4)
    reg, grads = jax.jit(on_mesh(lambda p: chunk_regularization(model, p, comm), grid, (specs,),
                                 (P(), specs)))(params)
    ref, g_ref = jax.jit(jax.value_and_grad(model.regularization))(params)
    np.testing.assert_allclose(float(reg), float(ref), rtol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    norm = jax.jit(on_mesh(chunk_norm(comm), grid, (specs,), P()))(params)
    np.testing.assert_allclose(float(norm), float(optax.tree.norm(params)), rtol=1e-13)


def test_the_memory_estimate_counts_the_largest_real_chunk_of_a_padded_depth():
    """Depth 13 on 2 MPI ranks (padded to 16 steps): the first rank holds 8 real layers of the parameters, gradient
    and Adam's moments, the second 5; the estimate counts the first rank's 8 of 13 layers, and no pad layer."""
    from lpt.train.memory import estimate_step_memory

    runtime, solver = _runtime_for(2)
    runtime, sharded = runtime.shard_layers(solver, 13)
    assert isinstance(sharded, ChunkLocal)
    model = ResNet(input_shape=(2,), num_outputs=3, depth=13, width=8)
    x = jax.ShapeDtypeStruct((100, 2), np.float32)
    opt = optax.adam(1e-3)
    whole, chunk = (estimate_step_memory(model, s, opt, x) for s in (solver, sharded))
    layers = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(model.init(jax.random.PRNGKey(0),
                                                                               np.float32)["layers"]))
    assert whole.gradient - chunk.gradient == layers * 5 // 13
    assert whole.state - chunk.state == 3 * (layers * 5 // 13)  # parameters and Adam's two moments
