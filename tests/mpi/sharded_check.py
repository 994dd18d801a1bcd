"""Run under mpirun: layer-sharded parameters on MPI ranks (``parallel=mpi``, issue 13 item 1).

Arguments: run directory, depth, then Hydra overrides (``parallel.data=D``: D data ranks, the others layer ranks).
Every rank builds the run as ``lpt-train`` does, trains it (``_Run.train``: the log and checkpoint are written
into the run directory, for the test to compare with one process) and checks:
- its ``params["layers"]`` and the Adam moments hold its real layers (layer rank p: rows p·s … (p+1)·s − 1 of
  the whole initialisation, s the layout's stride; the last rank the rest up to N, never a pad layer), before and
  after training; opening and classifier are whole;
- the regularisation from the chunks (halo across the chunk boundary) equals the one of the whole stack, its
  gradient this chunk's rows of the whole gradient (float64, 1e-13);
- the gradient norm summed over the chunks equals the norm of the whole tree;
- the gathered parameters (:meth:`Runtime.whole_params`) and the checkpoint's whole state (rank 0) are the
  chunks joined, and a rank's blocks of that state are its own state again (:meth:`Runtime.local_state`).
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from mpi4py import MPI  # noqa: E402

from lpt.cli.compose import compose_config  # noqa: E402
from lpt.parallel.sharded import ChunkLocal, chunk_regularization  # noqa: E402
from lpt.train.loop import _Run, _setup  # noqa: E402

run_dir, depth, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
world = MPI.COMM_WORLD
rank, ranks = world.Get_rank(), world.Get_size()
data = int(next((o.split("=")[1] for o in overrides if o.startswith("parallel.data=")), 1))
layers = ranks // data
cfg = compose_config(["solver=mgrit", "dtype=float64", "parallel=mpi", f"parallel.layers={layers}",
                      f"model.depth={depth}", *overrides])
r = _Run(cfg, run_dir, _setup(cfg))
s, layout = r.s, r.s.solver.layouts(depth)[0]
assert isinstance(s.solver, ChunkLocal) and s.runtime.layer_shards, s.runtime.layout
whole = s.model.init(jax.random.PRNGKey(s.seed), jnp.float64)
layer_rank = rank % layers
rows = slice(layer_rank * layout.stride, depth if layer_rank == layers - 1 else (layer_rank + 1) * layout.stride)
n_local = rows.stop - rows.start  # this rank's real layers
print(f"rank {rank}: layers {rows.start}..{rows.stop - 1} of {depth} (padded to {layout.n_pad})", flush=True)


def layer_leaves(tree):
    return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if any(getattr(k, "key", None) == "layers" for k in path)]


def check_shapes(state):  # K and b of the parameters and of Adam's two moments
    leaves = layer_leaves((state.params, state.opt_state))
    assert len(leaves) == 6 and all(leaf.shape[0] == n_local for leaf in leaves), [a.shape for a in leaves]
    for name in ("opening", "classifier"):
        for a, b in zip(jax.tree_util.tree_leaves(state.params[name]), jax.tree_util.tree_leaves(whole[name])):
            assert a.shape == b.shape


check_shapes(r.state)
for a, b in zip(layer_leaves(r.state.params), layer_leaves(whole)):
    np.testing.assert_array_equal(a, b[rows])

# the regularisation of the whole stack from the chunks
reg, g_reg = jax.jit(lambda p: chunk_regularization(s.model, p, s.solver.comm))(r.state.params)
ref, g_ref = jax.jit(jax.value_and_grad(s.model.regularization))(whole)  # one program, not op by op
assert float(ref) > 0 and abs(float(reg) - float(ref)) <= 1e-13 * float(ref), (reg, ref)
for a, b in zip(layer_leaves(g_reg), layer_leaves(g_ref)):
    np.testing.assert_allclose(a, b[rows], rtol=1e-13, atol=1e-15)
np.testing.assert_allclose(g_reg["classifier"]["W"], g_ref["classifier"]["W"], rtol=1e-13)
# the norm of a chunked tree
norm = jax.jit(s.runtime.tree_norm)(r.state.params)
np.testing.assert_allclose(float(norm), float(optax.tree.norm(whole)), rtol=1e-13)

r.train()
state = r.state
check_shapes(state)
# gathered parameters and the checkpoint's whole state
gathered = s.runtime.whole_params(state.params)
for a, b in zip(layer_leaves(gathered), layer_leaves(state.params)):
    assert a.shape[0] == depth
    np.testing.assert_array_equal(a[rows], b)
host = s.runtime.host_state(state)
if rank == 0:
    assert all(a.shape[0] == depth for a in layer_leaves((host.params, host.opt_state)))
back = s.runtime.local_state(world.bcast(jax.device_get(host) if rank == 0 else None, root=0))
for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)
print("ok", rank, flush=True)
