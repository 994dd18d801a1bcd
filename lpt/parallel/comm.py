"""The one module that owns all communication (DESIGN §4).

The solver sees a :class:`Comm` with three collective operations along the *layer* axis of the processor grid
and one along the *data* axis; it never knows which back-end moves the data:

- ``shift(x, boundary, reverse)``: every layer chunk receives ``x`` of its predecessor (of its successor when
  ``reverse``); the first chunk (last when ``reverse``) receives ``boundary``. This is the only message of a
  relaxation sweep: a chunk needs its neighbour's last state.
- ``layer_sum(x)``: sum over the layer chunks (norms, losses).
- ``layer_gather(x)``: the chunks' arrays concatenated along axis 0 in chunk order (a coarse level that is
  too small to spread is gathered and solved redundantly).
- ``data_sum(x)``: sum over data-parallel ranks (gradients, losses).

Back-ends: :class:`SingleComm` (one device, no communication), :class:`MeshComm` (one process, several devices:
inside ``shard_map`` over a mesh with axes ("data", "layers"), with ``ppermute`` / ``psum`` / ``all_gather``),
:class:`MPIComm` (one process per device, ``mpi4jax`` ``sendrecv`` / ``allreduce`` / ``allgather`` on
communicators split into data and layer groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp

DATA_AXIS = "data"
LAYER_AXIS = "layers"


class Comm(Protocol):
    """Collectives of a layer-parallel solver; ``layers`` and ``data`` are the static grid sizes."""

    layers: int
    data: int

    def layer_rank(self) -> jnp.ndarray | int:
        """Index of this layer chunk (a traced value inside ``shard_map``)."""

    def shift(self, x: jnp.ndarray, boundary: jnp.ndarray, reverse: bool = False) -> jnp.ndarray:
        """Receive ``x`` from the previous chunk (next chunk if ``reverse``); the end chunk gets ``boundary``."""

    def layer_sum(self, x: jnp.ndarray) -> jnp.ndarray:
        """Sum over layer chunks."""

    def layer_gather(self, x: jnp.ndarray) -> jnp.ndarray:
        """Concatenate along axis 0 over layer chunks, in chunk order (shape (layers·n, …))."""

    def data_sum(self, x: Any) -> Any:
        """Sum a pytree over data-parallel ranks."""


@dataclass(frozen=True)
class SingleComm:
    """One device: no neighbours, sums and gathers are the identity."""

    layers: int = 1
    data: int = 1

    def layer_rank(self) -> int:
        return 0

    def shift(self, x, boundary, reverse=False):
        return boundary

    def layer_sum(self, x):
        return x

    def layer_gather(self, x):
        return x

    def data_sum(self, x):
        return x


def data_mean(comm: Any) -> Any:
    """``tree -> tree`` averaged over the data-parallel ranks of ``comm`` (identity without them, or for None)."""
    if comm is None or comm.data == 1:
        return lambda tree: tree
    return lambda tree: jax.tree_util.tree_map(lambda a: comm.data_sum(a) / comm.data, tree)


def from_chunk(comm: Any, owner: int, x: jnp.ndarray) -> jnp.ndarray:
    """``x`` of chunk ``owner`` on every chunk (a masked sum over the chunks: exact)."""
    # message: one state, reduced over the layer chunks
    return comm.layer_sum(jnp.where(comm.layer_rank() == owner, x, jnp.zeros_like(x)))


def _select_boundary(is_end: jnp.ndarray, boundary: jnp.ndarray, received: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(is_end, boundary, received)


@dataclass(frozen=True)
class MeshComm:
    """Several devices of one process; valid inside ``shard_map`` over a mesh with axes ("data", "layers")."""

    layers: int
    data: int

    def layer_rank(self):
        return jax.lax.axis_index(LAYER_AXIS)

    def shift(self, x, boundary, reverse=False):
        # block shapes: x, boundary (…) per chunk; message: one state to the neighbour chunk
        if self.layers == 1:
            return boundary
        pairs = [(i + 1, i) if reverse else (i, i + 1) for i in range(self.layers - 1)]
        received = jax.lax.ppermute(x, LAYER_AXIS, perm=pairs)
        end = self.layers - 1 if reverse else 0
        return _select_boundary(self.layer_rank() == end, boundary, received)

    def layer_sum(self, x):
        return jax.lax.psum(x, LAYER_AXIS) if self.layers > 1 else x

    def layer_gather(self, x):
        return jax.lax.all_gather(x, LAYER_AXIS, axis=0, tiled=True) if self.layers > 1 else x

    def data_sum(self, x):
        return jax.lax.psum(x, DATA_AXIS) if self.data > 1 else x


@dataclass(frozen=True, eq=False)
class MPIComm:
    """One process per device (``mpirun`` / ``srun``), communication by ``mpi4jax``.

    World rank r sits at (data_rank, layer_rank) = divmod(r, layers); ``layer_comm`` joins the ranks with the same
    data rank, ``data_comm`` those with the same layer rank.
    """

    layers: int
    data: int
    rank: int
    layer_comm: Any
    data_comm: Any

    @classmethod
    def from_world(cls, layers: int, data: int) -> "MPIComm":
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        data_rank, layer_rank = divmod(world.Get_rank(), layers)
        return cls(layers=layers, data=data, rank=world.Get_rank(),
                   layer_comm=world.Split(color=data_rank, key=layer_rank),
                   data_comm=world.Split(color=layer_rank, key=data_rank))

    def layer_rank(self) -> int:
        return self.layer_comm.Get_rank()

    def shift(self, x, boundary, reverse=False):
        if self.layers == 1:
            return boundary
        import mpi4jax

        r, p = self.layer_rank(), self.layers
        source, dest = ((r + 1) % p, (r - 1) % p) if reverse else ((r - 1) % p, (r + 1) % p)
        received = mpi4jax.sendrecv(x, x, source=source, dest=dest, comm=self.layer_comm)
        return boundary if r == (p - 1 if reverse else 0) else received

    def layer_sum(self, x):
        if self.layers == 1:
            return x
        import mpi4jax
        from mpi4py import MPI

        return mpi4jax.allreduce(x, op=MPI.SUM, comm=self.layer_comm)

    def layer_gather(self, x):
        if self.layers == 1:
            return x
        import mpi4jax

        return mpi4jax.allgather(x, comm=self.layer_comm).reshape(-1, *x.shape[1:])

    def data_sum(self, x):
        if self.data == 1:
            return x
        import mpi4jax
        from mpi4py import MPI

        return jax.tree_util.tree_map(lambda a: mpi4jax.allreduce(a, op=MPI.SUM, comm=self.data_comm), x)


@dataclass(frozen=True)
class ReversedComm:
    """The layer chunks in reverse order (the adjoint runs on the reversed layer index): chunk p of ``comm``
    is chunk layers−1−p here, so shifts go the other way and gathers are in reversed chunk order."""

    comm: Any

    @property
    def layers(self) -> int:
        return self.comm.layers

    @property
    def data(self) -> int:
        return self.comm.data

    def layer_rank(self):
        return self.comm.layers - 1 - self.comm.layer_rank()

    def shift(self, x, boundary, reverse=False):
        return self.comm.shift(x, boundary, reverse=not reverse)

    def layer_sum(self, x):
        return self.comm.layer_sum(x)

    def layer_gather(self, x):
        g = self.comm.layer_gather(x)
        return g.reshape(self.layers, -1, *g.shape[1:])[::-1].reshape(g.shape)

    def data_sum(self, x):
        return self.comm.data_sum(x)


def idle_barrier(world: Any = None, poll_s: float = 0.01) -> None:
    """A barrier of ``world`` (default ``MPI.COMM_WORLD``) whose waiting ranks sleep between polls.

    MPI's blocking calls wait by polling, a busy core per waiting rank: where one rank works alone for a while
    (a reference solve, one-rank timings) and the others only wait for it, they wait here and leave the cores
    to it. Not for the training step: the sleep adds up to ``poll_s`` to every wait.
    """
    import time

    if world is None:
        from mpi4py import MPI

        world = MPI.COMM_WORLD
    request = world.Ibarrier()
    while not request.Test():
        time.sleep(poll_s)
