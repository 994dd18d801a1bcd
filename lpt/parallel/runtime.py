"""What the training loop needs to know about the back-end: one :class:`Runtime` per run.

- ``single``: one device; the step is jitted as written.
- ``mesh``: one or several processes, one global device mesh. With layer chunks the layer parameters, their
  gradient and optimiser state are split along "layers" (:class:`~lpt.parallel.sharded.LayerSharded`: the
  step runs over global arrays, the solver's gradient per chunk under ``shard_map``); with data ranks only the
  per-chunk step runs under ``shard_map`` with parameters and optimiser state replicated. Samples are split
  along "data", MGRIT warm-start states along "layers" and "data".
- ``mpi``: one process per rank; every rank runs the per-chunk step on its slice of the batch, and only
  rank 0 writes files and prints. With layer chunks each rank holds only its chunk's layer parameters and
  optimiser state (:class:`~lpt.parallel.sharded.ChunkLocal`, :meth:`Runtime.shard_layers`); checkpoints
  gather them to rank 0, and a resumed rank takes its chunk back.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lpt.parallel.comm import Comm
from lpt.parallel.grid import ProcessorGrid
from lpt.parallel.products import chunk_norm, chunk_products
from lpt.parallel.sharded import (REPLICATED, SAMPLES, ChunkLocal, LayerSharded, canonical_layers, chunk_state_specs,
                                  history_axis, on_mesh, place, shardings, stored_layers, stored_rows, stored_specs,
                                  under_layers)


@dataclass(frozen=True, eq=False)
class Runtime:
    """The processor grid of a run and its communication; ``layer_shards``: MPI ranks hold only their chunk's
    layer parameters and optimiser state (:meth:`shard_layers`): layer rank p the layers p·``chunk_rows`` …
    (p+1)·``chunk_rows`` − 1, the last rank the rest of the ``depth``; ``chunking``: the solver's layout by which a
    layer-sharded mesh keeps the layer stacks of parameters and optimiser state
    (:func:`~lpt.parallel.sharded.stored_layers`: each device its chunk's rows; files and evaluations see the
    ``depth`` real layers); ``layout`` says where the layer state lives."""

    grid: ProcessorGrid
    comm: Comm
    layer_shards: bool = False
    layout: str = ""
    chunk_rows: int = 0
    depth: int = 0
    chunking: Any = None

    @property
    def stored(self) -> bool:
        """Whether the layer stacks are kept as a layer-sharded mesh stores them."""
        return self.chunking is not None

    @classmethod
    def create(cls, grid: ProcessorGrid) -> "Runtime":
        return cls(grid, grid.comm())

    @property
    def is_root(self) -> bool:
        """Whether this process writes logs and checkpoints (all but MPI ranks > 0 and JAX processes > 0)."""
        if self.grid.processes > 1:
            return jax.process_index() == 0
        return self.grid.backend != "mpi" or getattr(self.comm, "rank", 0) == 0

    def host_state(self, state: Any, batch_axis: int = 0) -> Any:
        """The training state ``state`` whole, for a checkpoint: warm-start states of all layer chunks (and
        data ranks) joined as the mesh joins them (chunk blocks along the layer axis, sample blocks along the
        batch axis), and with ``layer_shards`` the chunks' layer parameters and optimiser state joined along the
        layer axis. A collective: every process calls it. MPI ranks other than 0 get their own blocks back."""
        if self.grid.processes > 1:
            from jax.experimental import multihost_utils

            def whole(a):
                if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
                    return multihost_utils.process_allgather(a, tiled=True)
                return a

            return self._canonical(jax.tree_util.tree_map(whole, state))
        if self.grid.backend != "mpi" or self.grid.size == 1:
            return self._canonical(state)

        def join(a):
            if getattr(a, "ndim", 0) < 2:  # replicated scalars (valid, mode, count)
                return a
            samples = self.comm.data_comm.gather(np.asarray(a), root=0)
            if samples is None:
                return a
            chunks = self.comm.layer_comm.gather(np.concatenate(samples, axis=1 + batch_axis), root=0)
            return a if chunks is None else np.concatenate(chunks, axis=0)

        def layers(a, axis):  # message: a layer chunk to rank 0
            chunks = self.comm.layer_comm.gather(np.asarray(a), root=0)
            return a if chunks is None else np.concatenate(chunks, axis=axis)

        state = self._on_layers(state, layers)
        return state._replace(solver_state=jax.tree_util.tree_map(join, state.solver_state))

    def checkpoint_template(self, state: Any, batch_axis: int = 0) -> Any:
        """What :meth:`host_state` makes of ``state``, as shapes (to load a checkpoint into)."""
        if self.stored:
            return jax.eval_shape(self._canonical, state)
        if self.grid.backend != "mpi" or self.grid.size == 1:
            return state

        def whole(a):
            if getattr(a, "ndim", 0) < 2:
                return a
            shape = list(a.shape)
            shape[0] *= self.grid.layers
            shape[1 + batch_axis] *= self.grid.data
            return jax.ShapeDtypeStruct(tuple(shape), a.dtype)

        state = self._on_layers(state, lambda a, axis: jax.ShapeDtypeStruct(
            (*a.shape[:axis], self.depth, *a.shape[axis + 1:]), a.dtype))
        return state._replace(solver_state=jax.tree_util.tree_map(whole, state.solver_state))

    def local_state(self, state: Any, batch_axis: int = 0) -> Any:
        """This MPI rank's blocks of a whole state (a loaded checkpoint): its warm-start blocks and, with
        ``layer_shards``, its chunk of the layer parameters and optimiser state; other back-ends take it whole (a
        layer-sharded mesh as it stores it)."""
        if self.stored:
            return state._replace(params=self.local_params(state.params), opt_state=self.local_params(state.opt_state))
        if self.grid.backend != "mpi" or self.grid.size == 1:
            return state
        layer, data = self.comm.layer_comm.Get_rank(), self.comm.data_comm.Get_rank()

        def block(a):
            if getattr(a, "ndim", 0) < 2:
                return a
            rows, cols = a.shape[0] // self.grid.layers, a.shape[1 + batch_axis] // self.grid.data
            a = a[layer * rows:(layer + 1) * rows]
            index = (slice(None),) * (1 + batch_axis) + (slice(data * cols, (data + 1) * cols),)
            return a[index]

        state = self._on_layers(state, self._own_chunk)
        return state._replace(solver_state=jax.tree_util.tree_map(block, state.solver_state))

    # --- MPI ranks with layer-sharded parameters -------------------------------------------------------
    def shard_layers(self, solver: Any, depth: int) -> tuple["Runtime", Any]:
        """The runtime and solver of a depth-``depth`` network: on ``parallel=mpi`` with layer chunks each rank
        keeps only its chunk's real layers (:class:`~lpt.parallel.sharded.ChunkLocal`: chunk p is layers p·s …
        (p+1)·s − 1, s the layout's stride, the last chunk the rest; identity steps' weights are made inside the
        solve only), and its chunk of the optimiser state (L-BFGS's inner products summed over the chunks:
        :attr:`products`)."""
        if isinstance(solver, LayerSharded):
            return self._mesh_layers(solver.layouts(depth)[0]), solver
        if self.grid.backend != "mpi" or self.grid.layers == 1 or not hasattr(solver, "local_layers"):
            return self, solver
        layout = solver.layouts(depth)[0]
        counts = [layout.stride] * (self.grid.layers - 1) + [layout.last_rows]
        each = (f"{layout.stride} layers each" if len(set(counts)) == 1 else f"{' + '.join(map(str, counts))} layers")
        if layout.rows > min(counts):
            each += f"; identity steps up to {layout.rows} per rank are added inside the solve only"
        line = f"layer parameters and optimiser state split over the {self.grid.layers} layer ranks ({each})"
        sharded = ChunkLocal(dataclasses.replace(solver, local_layers=True))
        return dataclasses.replace(self, layer_shards=True, layout=line, chunk_rows=layout.stride,
                                   depth=depth), sharded

    def _mesh_layers(self, layout: Any) -> "Runtime":
        """The runtime of a layer-sharded mesh: each device keeps its chunk's ``n_local`` rows of the layer stacks
        (the chunk's layers as the solver's ``layout`` cuts them, zero rows after them)."""
        counts = [layout.stride] * (layout.chunks - 1) + [layout.last_rows]
        line = (f"layer parameters, gradient and optimiser state split over the {layout.chunks} layer chunks "
                f"({' + '.join(map(str, counts))} layers")
        if stored_rows(layout) > layout.depth:
            line += (f"; {stored_rows(layout) - layout.depth} zero rows fill each chunk to the {layout.rows} rows "
                     + ("its solve uses" if not layout.tail else "of the largest (its solve's and the serial tail's)"))
        return dataclasses.replace(self, chunking=layout, layout=line + ")", depth=layout.depth)

    @property
    def tree_norm(self) -> Callable[[Any], jnp.ndarray]:
        """‖·‖₂ of a gradient-shaped pytree as this process holds it (summed over the chunks when sharded)."""
        return chunk_norm(self.comm) if self.layer_shards else optax.tree.norm

    @property
    def products(self) -> Callable[[], Any]:
        """The context in which an optimiser with inner products (L-BFGS) is traced: with ``layer_shards`` optax's
        inner products and norms summed over the chunks (:func:`~lpt.parallel.products.chunk_products`)."""
        return (lambda: chunk_products(self.comm)) if self.layer_shards else contextlib.nullcontext

    def local_params(self, params: Any) -> Any:
        """This rank's chunk of parameter-shaped pytree ``params`` (the whole tree unless ``layer_shards``; on a
        layer-sharded mesh the whole tree as it is stored: :func:`~lpt.parallel.sharded.stored_layers`)."""
        if self.stored:
            return stored_layers(params, self.chunking)
        return self._map_layers(params, self._own_chunk) if self.layer_shards else params

    def whole_params(self, params: Any) -> Any:
        """The whole layer stack on every rank (a collective; for evaluations): the inverse of
        :meth:`local_params`."""
        if self.stored:
            return canonical_layers(params, self.chunking)
        if not self.layer_shards:
            return params
        # message: every layer chunk to every rank
        return self._map_layers(params, lambda a, axis: jnp.asarray(np.concatenate(
            self.comm.layer_comm.allgather(np.asarray(a)), axis=axis)))

    def _canonical(self, state: Any) -> Any:
        """A training state with the real layers of stored layer stacks (:meth:`whole_params`)."""
        if not self.stored:
            return state
        return state._replace(params=self.whole_params(state.params), opt_state=self.whole_params(state.opt_state))

    def _own_chunk(self, a: Any, axis: int = 0) -> Any:
        """This layer rank's real layers of a whole stack (rows p·chunk_rows …, the last rank's up to the depth)
        along its layer ``axis``."""
        rank = self.comm.layer_comm.Get_rank()
        start = rank * self.chunk_rows
        rows = slice(start, self.depth if rank == self.grid.layers - 1 else start + self.chunk_rows)
        return a[(slice(None),) * axis + (rows,)]

    @staticmethod
    def _map_layers(tree: Any, fn: Callable[[Any, int], Any]) -> Any:
        """``tree`` with ``fn(leaf, its layer axis)`` applied to the leaves of its layer stacks
        (:func:`~lpt.parallel.sharded.history_axis`)."""
        return jax.tree_util.tree_map_with_path(
            lambda path, a: fn(a, history_axis(path)) if under_layers(path) else a, tree)

    def _on_layers(self, state: Any, fn: Callable[[Any, int], Any]) -> Any:
        """``state`` with ``fn`` applied to the layer leaves of its parameters and optimiser state (sharded only)."""
        if not self.layer_shards:
            return state
        return state._replace(params=self._map_layers(state.params, fn),
                              opt_state=self._map_layers(state.opt_state, fn))

    def agree_stop(self) -> Callable[[int], int] | None:
        """How the processes agree on a stop signal (the largest signal number any received), or None for one
        process: MPI ranks by an allreduce, the processes of a multi-process mesh by a gather."""
        if self.grid.backend == "mpi":
            from lpt.parallel.faults import agree_max

            return agree_max()
        if self.grid.processes > 1:
            import numpy as np
            from jax.experimental import multihost_utils

            return lambda signum: int(np.max(multihost_utils.process_allgather(np.int32(signum))))
        return None

    def with_comm(self, solver: Any) -> Any:
        """The solver working on this run's layer chunks (solvers without chunks are returned as they are); on
        a mesh with layer chunks the layer-parallel solver with layer-sharded parameters."""
        names = {f.name for f in dataclasses.fields(solver)}
        if "comm" not in names:
            return solver
        solver = dataclasses.replace(solver, comm=self.comm)
        if self.grid.backend == "mesh" and self.grid.layers > 1 and "local_layers" in names:
            inner = dataclasses.replace(solver, local_layers=True)
            return LayerSharded(inner, self.grid, lambda model, params, x: self._state_specs(inner, model, params, x))
        return solver

    def step_comm(self, solver: Any) -> Comm | None:
        """The communication the training step itself averages and agrees with: none when it runs over global
        arrays (layer-sharded mesh), the grid's otherwise."""
        return None if isinstance(solver, LayerSharded) else self.comm

    def state_specs(self, state: Any, solver: Any, model: Any, params: Any, x: jnp.ndarray) -> Any:
        """Specs of a training state on the layer-sharded mesh: parameters and optimiser state by
        :func:`~lpt.parallel.sharded.stored_specs`, the solver state by chunk, the rest replicated."""
        solver_specs = self._state_specs(solver, model, params, x)

        def spec(name, value):
            if name == "solver_state":
                return solver_specs
            if name in ("params", "opt_state"):
                return stored_specs(value, stored_rows(solver.layouts(model.depth)[0]), self.grid.layers)
            return jax.tree_util.tree_map(lambda _: REPLICATED, value)

        return type(state)(*[spec(name, getattr(state, name)) for name in state._fields])

    def place_state(self, state: Any, solver: Any, model: Any, params: Any, x: jnp.ndarray) -> Any:
        """The training state laid out as the step keeps it: layer-sharded on a mesh with layer chunks (each
        device holds its chunk's parameters, optimiser state and warm-start states), as it is otherwise."""
        if not isinstance(solver, LayerSharded):
            return state
        return place(state, self.state_specs(state, solver, model, params, x), self.grid)

    def local_batch(self, x: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """This process's samples of a batch: its data rank's slice on MPI, the whole batch otherwise
        (the mesh splits it itself)."""
        if self.grid.backend != "mpi" or self.grid.data == 1:
            return x, y
        size = x.shape[0] // self.grid.data
        rank = self.comm.data_comm.Get_rank()
        return x[rank * size:(rank + 1) * size], y[rank * size:(rank + 1) * size]

    def init_solver_state(self, solver: Any, model: Any, params: Any, x: jnp.ndarray) -> Any:
        """The solver's initial warm-start state for batch ``x`` (global arrays on the mesh)."""
        if self.grid.backend != "mesh":
            return solver.init_state(model, params, self.local_batch(x, x)[0])
        specs = self._state_specs(solver, model, params, x)
        fn = on_mesh(lambda p, xb: solver.init_state(model, p, xb), self.grid, (REPLICATED, SAMPLES), specs)
        return jax.jit(fn)(params, x)

    def _state_specs(self, solver: Any, model: Any, params: Any, x: jnp.ndarray) -> Any:
        local = jax.ShapeDtypeStruct((x.shape[0] // self.grid.data, *x.shape[1:]), x.dtype)
        return chunk_state_specs(jax.eval_shape(lambda p, xb: solver.init_state(model, p, xb), params, local),
                                 getattr(model, "state_batch_axis", 0))

    def wrap_step(self, solver: Any, model: Any, params: Any, x: jnp.ndarray) -> Callable[[Callable], Callable]:
        """How the per-chunk training step ``(state, x, y) -> (state, metrics, stats)`` is run on this grid."""
        if self.grid.backend != "mesh":
            return lambda fn: fn
        if isinstance(solver, LayerSharded):  # global arrays: the new state keeps the layout of the old
            def keep(fn: Callable) -> Callable:
                def run(state, xb, yb):
                    new, metrics, stats = fn(state, xb, yb)
                    layout = shardings(new, self.state_specs(new, solver, model, params, x), self.grid)
                    return jax.lax.with_sharding_constraint(new, layout), metrics, stats

                return run

            return keep
        solver_specs = self._state_specs(solver, model, params, x)

        def wrap(fn: Callable) -> Callable:
            def state_specs(state):
                return type(state)(*[solver_specs if name == "solver_state" else REPLICATED
                                     for name in state._fields])

            def run(state, xb, yb):
                specs = state_specs(state)
                return on_mesh(fn, self.grid, (specs, SAMPLES, SAMPLES), (specs, REPLICATED, REPLICATED))(state, xb, yb)

            return run

        return wrap
