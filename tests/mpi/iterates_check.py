"""Run under mpirun: the MGRIT one-shot solver on MPI ranks gives the single-device iterates.

Arguments: data-parallel size, depth, layer kind (dense | conv). Every rank checks its own chunk's forward
and adjoint states, the objective and the gradient against a single-device solve of the same problem (solved
once, on rank 0, and sent to every rank).
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from test_parallel_mgrit import problem, rel, solver_for  # noqa: E402

from lpt.parallel.comm import idle_barrier  # noqa: E402
from lpt.parallel.grid import ProcessorGrid  # noqa: E402

data, depth, layer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
world = MPI.COMM_WORLD
grid = ProcessorGrid("mpi", data=data, layers=world.Get_size() // data)
comm = grid.comm()
single, dist = solver_for(), solver_for(comm)
# rank 0 draws the problem and computes the single-device reference; the other ranks receive both (the same
# numbers: each rank drawing and compiling them again only multiplies the work on a machine the ranks share); they
# wait asleep (idle_barrier), not spinning in the bcast
if world.Get_rank() == 0:
    model, params, x, y = problem(depth, layer)
    ref = jax.jit(lambda p: single.value_and_grad(model, p, x, y, single.init_state(model, p, x)))(params)
    shared = jax.device_get((params, x, y, ref))
else:
    shared = None
idle_barrier(world)
params, x, y, ref = jax.tree_util.tree_map(jnp.asarray, world.bcast(shared, root=0))
model = problem(depth, layer, init=False)[0]
d_rank, l_rank = divmod(world.Get_rank(), grid.layers)
b = x.shape[0] // data
xs, ys_ = x[d_rank * b:(d_rank + 1) * b], y[d_rank * b:(d_rank + 1) * b]


@jax.jit
def local(p):
    obj, _, grads, state, stats = dist.value_and_grad(model, p, xs, ys_, dist.init_state(model, p, xs))
    mean = lambda t: jax.tree_util.tree_map(lambda a: comm.data_sum(a) / data, t)  # noqa: E731
    return mean(obj), mean(grads), state, stats


obj, grads, state, stats = local(params)
layout = dist.layouts(depth)[0]  # chunk p: layers p·stride …, the last chunk the rest
lo = l_rank * layout.stride
hi = depth if l_rank == layout.chunks - 1 else lo + layout.stride
assert abs(float(obj) - float(ref[0])) <= 1e-12 * abs(float(ref[0])), (obj, ref[0])
assert rel(grads, ref[2]) < 1e-12, rel(grads, ref[2])
if hi >= lo:
    np.testing.assert_allclose(state.ys[: hi - lo + 1], ref[3].ys[lo:hi + 1, d_rank * b:(d_rank + 1) * b], rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(state.ybars[: hi - lo + 1] / data, ref[3].ybars[lo:hi + 1, d_rank * b:(d_rank + 1) * b],
                               rtol=0, atol=1e-12)
np.testing.assert_allclose(stats["fwd_residual"], ref[4]["fwd_residual"], rtol=1e-10)
print("ok", world.Get_rank(), flush=True)
