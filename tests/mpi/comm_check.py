"""Run under mpirun: checks MPIComm's collectives against their definitions. Argument: data-parallel size."""

import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from lpt.parallel.grid import ProcessorGrid  # noqa: E402

world = MPI.COMM_WORLD
data = int(sys.argv[1])
layers = world.Get_size() // data
grid = ProcessorGrid("mpi", data=data, layers=layers)
grid.check_resources()
comm = grid.comm()
d, lr = divmod(world.Get_rank(), layers)
value = lambda d_, l_: jnp.full((3,), 10.0 * d_ + l_ + 1)  # noqa: E731
x, boundary = value(d, lr), jnp.full((3,), -7.0)


@jax.jit
def collectives(x):
    return (comm.shift(x, boundary), comm.shift(x, boundary, reverse=True), comm.layer_sum(x),
            comm.layer_gather(x[None]), comm.data_sum(x))


fwd, bwd, lsum, gathered, dsum = collectives(x)
np.testing.assert_array_equal(fwd, boundary if lr == 0 else value(d, lr - 1))
np.testing.assert_array_equal(bwd, boundary if lr == layers - 1 else value(d, lr + 1))
np.testing.assert_array_equal(lsum, sum(value(d, k) for k in range(layers)))
np.testing.assert_array_equal(gathered, np.stack([value(d, k) for k in range(layers)]))
np.testing.assert_array_equal(dsum, sum(value(k, lr) for k in range(data)))
print("ok", flush=True)
