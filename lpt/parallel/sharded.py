"""Layer-sharded parameters: on the ``mesh`` back-end :class:`LayerSharded` (``shard_map`` over the ("data",
"layers") mesh), on the ``mpi`` back-end :class:`ChunkLocal` (each rank holds its chunk's layers).

Samples are split along "data"; per-chunk states (the MGRIT warm start) along "layers" (and "data"). Without
layer chunks, parameters and optimiser state are replicated and the same per-chunk code runs on the ``single``
and ``mpi`` back-ends without a wrapper.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lpt.mgrit.hierarchy import pad_states, pad_zeros
from lpt.mgrit.layout import Layout, own_rows_mask, real_rows
from lpt.model.serial import SerialSolver
from lpt.parallel.comm import data_mean
from lpt.parallel.grid import ProcessorGrid

REPLICATED = P()
SAMPLES = P("data")


def on_mesh(fn: Callable, grid: ProcessorGrid, in_specs: Any, out_specs: Any) -> Callable:
    """``fn`` (written for one chunk with a :class:`~lpt.parallel.comm.MeshComm`) over the grid's mesh."""
    return jax.shard_map(fn, mesh=grid.mesh(), in_specs=in_specs, out_specs=out_specs, check_vma=False)


def chunk_states(batch_axis: int = 0) -> P:
    """Spec of per-chunk states (n_local+1, …): split by layer chunk and by sample, the samples on axis
    ``batch_axis`` of one batch of states (0, or 1 for channels-first conv states: ``model.state_batch_axis``)."""
    return P("layers", *[None] * batch_axis, "data")


def chunk_state_specs(state: Any, batch_axis: int = 0) -> Any:
    """Specs of a solver's warm-start state: arrays with a layer axis as :func:`chunk_states`, scalars
    replicated."""
    spec = chunk_states(batch_axis)
    return jax.tree_util.tree_map(lambda a: spec if getattr(a, "ndim", 0) >= 2 else REPLICATED, state)


def under_layers(path: tuple) -> bool:
    """Whether a pytree path passes a ``"layers"`` key (a leaf of the layer stack, its gradient or moments)."""
    return any(getattr(key, "key", None) == "layers" for key in path)


def stored_rows(layout: Layout) -> int:
    """Rows of a layer stack as the layer-sharded mesh stores it (:func:`stored_layers`): the solver's chunks one
    after the other, :attr:`~lpt.mgrit.layout.Layout.rows` rows each (``n_local``, or the last chunk's MGRIT
    steps and serial tail)."""
    return layout.chunks * layout.rows


def history_axis(path: tuple) -> int:
    """The layer axis of a leaf under ``"layers"``: 1 in an L-BFGS history (optax's ``*_memory`` fields, a leading
    axis of ``memory_size`` entries), 0 otherwise (parameters, gradients, moments)."""
    return 1 if any(str(getattr(key, "name", "")).endswith("_memory") for key in path) else 0


def layer_axis(path: tuple, shape: tuple[int, ...], depth: int, layers: int) -> int | None:
    """The axis of a parameter-shaped leaf (parameters, gradients, optimiser moments, L-BFGS histories) that is
    split over the layer chunks: for leaves under a ``"layers"`` key their :func:`history_axis` if it has ``depth``
    entries and ``depth`` is a multiple of the chunks; None (replicated) otherwise."""
    if depth % layers or not under_layers(path):
        return None
    axis = history_axis(path)
    return axis if len(shape) > axis and shape[axis] == depth else None


def stored_axis(path: tuple, shape: tuple[int, ...], rows: int, layers: int) -> int | None:
    """The axis along which a leaf of the stored training state (parameters, optimiser state: layer stacks of
    ``rows`` rows, :func:`stored_rows`) is split over the layer chunks: a layer stack's layer axis
    (:func:`layer_axis`); for the other matrices (classifier, opening: ≥ 2 axes) their first axis with a
    multiple of the chunks, so that no device keeps a whole replicated matrix and its optimiser state (XLA
    gathers it where the step uses it whole); None (replicated) for vectors and scalars."""
    if under_layers(path):
        return layer_axis(path, shape, rows, layers)
    if len(shape) < 2:
        return None
    return next((k for k, n in enumerate(shape) if n % layers == 0), None)


def stored_specs(tree: Any, rows: int, layers: int) -> Any:
    """Specs of the stored training state's parameter-shaped pytrees (:func:`stored_axis`)."""
    def spec(path, leaf):
        axis = stored_axis(path, getattr(leaf, "shape", ()), rows, layers)
        return REPLICATED if axis is None else P(*[None] * axis, "layers")

    return jax.tree_util.tree_map_with_path(spec, tree)


def stored_layers(tree: Any, layout: Layout) -> Any:
    """A parameter-shaped pytree (parameters, optimiser state) of a depth-``layout.depth`` network as the
    layer-sharded mesh stores it: every layer stack's layer axis laid out as the solver's chunks (:func:`stored_rows`
    rows, chunk p's ``rows`` rows on layer device p: its real layers p·stride … (the last chunk's serial tail too),
    then zero rows), so that each device holds the rows its chunk solves with and the step moves no layer between
    devices. Zero rows stay
    zero: their steps are identity steps (step size 0: zero gradient), and every optimiser's update of a zero
    row with a zero gradient is zero. Numpy arrays stay on the host; where every chunk's rows are real layers
    (no zero rows) the tree is returned as it is."""
    depth = layout.depth
    index = np.full((layout.chunks, layout.rows), depth)  # depth: the zero row appended below
    index.reshape(-1)[real_rows(layout)] = np.arange(depth)
    index = index.reshape(-1)

    def lay_out(path, a):
        axis = layer_axis(path, np.shape(a), depth, 1)
        if axis is None or stored_rows(layout) == depth:
            return a
        xp = np if isinstance(a, np.ndarray) else jnp
        zero = xp.zeros_like(xp.take(a, np.arange(1), axis=axis))
        return xp.take(xp.concatenate([a, zero], axis=axis), index, axis=axis)

    return jax.tree_util.tree_map_with_path(lay_out, tree)


def canonical_layers(tree: Any, layout: Layout) -> Any:
    """The inverse of :func:`stored_layers`: every layer stack's ``layout.depth`` real layers in order (what
    checkpoints, logs and evaluations see)."""
    rows, index = stored_rows(layout), real_rows(layout)

    def cut(path, a):
        axis = layer_axis(path, np.shape(a), rows, 1)
        if axis is None or rows == layout.depth:
            return a
        return (np if isinstance(a, np.ndarray) else jnp).take(a, index, axis=axis)

    return jax.tree_util.tree_map_with_path(cut, tree)


def layer_specs(tree: Any, depth: int, layers: int) -> Any:
    """Specs of a parameter-shaped pytree: layer stacks split along "layers" (:func:`layer_axis`), the rest
    (opening, classifier, scalars) replicated."""
    def spec(path, leaf):
        axis = layer_axis(path, getattr(leaf, "shape", ()), depth, layers)
        return REPLICATED if axis is None else P(*[None] * axis, "layers")

    return jax.tree_util.tree_map_with_path(spec, tree)


def simplified(spec: P, grid: ProcessorGrid) -> P:
    """``spec`` without the mesh axes of size 1 and trailing Nones: the spec XLA gives the step's outputs, so a
    state laid out with it is the step's next input as it was its first (one compilation)."""
    sizes = {"data": grid.data, "layers": grid.layers}
    entries = [None if axis is not None and sizes[axis] == 1 else axis for axis in spec]
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def shardings(tree: Any, specs: Any, grid: ProcessorGrid) -> Any:
    """The ``NamedSharding`` of every leaf of ``tree`` from ``specs`` (a prefix of it), simplified."""
    from jax.sharding import NamedSharding

    mesh = grid.mesh()
    return jax.tree_util.tree_map(lambda _, spec: NamedSharding(mesh, simplified(spec, grid)), tree, specs)


def place(tree: Any, specs: Any, grid: ProcessorGrid) -> Any:
    """``tree`` as global arrays laid out by ``specs`` on the grid's mesh (each process takes its own blocks of
    host values that every process holds, so it works across processes too)."""
    def put(a, sharding):
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree, shardings(tree, specs, grid))


class LayerSharded:
    """A layer-parallel solver whose layer parameters, their gradient and optimiser state live sharded over the
    layer chunks (``parallel=mesh``, ``parallel.layers`` > 1).

    The training step is compiled over global arrays (XLA partitions the optimiser update along the layer axis:
    elementwise updates stay on each chunk, norms become reductions); the solver's gradient and the
    regularisation run per chunk, under ``shard_map``. The layer stacks come as the mesh stores them
    (:func:`stored_layers`: each device holds its chunk's ``rows`` rows, zero rows past its real layers), so
    a chunk's rows are where its solve needs them and no layer stack is gathered; the gradient comes in the same
    layout (averaged over the data ranks, zero on the zero rows). A stack given as it is (the real layers in order)
    is laid out so first and its gradient returned as it is. Every other attribute is the wrapped solver's.
    """

    def __init__(self, solver: Any, grid: ProcessorGrid, state_specs: Callable[[Any, Any, Any], Any]):
        self.solver, self.grid, self._state_specs = solver, grid, state_specs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.solver, name)

    def init_state(self, model, params, x):
        return self.solver.init_state(model, params, x)

    def _island(self, fn: Callable, model, params, x, y, state, out_specs: Callable[[Any, Any], Any]):
        """``fn(layout, params_chunk, (x, y), state)`` per chunk, on the stored stack split along the layers."""
        layout = self.solver.layouts(model.depth)[0]
        stored = params if as_stored(params, layout) else stored_layers(params, layout)
        specs = layer_specs(stored, stored_rows(layout), self.grid.layers)
        state_specs = self._state_specs(model, params, x)
        return on_mesh(partial(fn, layout), self.grid, (specs, SAMPLES, state_specs),
                       out_specs(specs, state_specs))(stored, (x, y), state)

    def value_and_grad(self, model, params, x, y, state):
        comm = self.solver.comm

        def chunk_fn(layout, p, xy, s):
            obj, aux, grads, s, stats = self.solver.value_and_grad(model, p, xy[0], xy[1], s)
            mean = data_mean(comm)
            reg, g_reg = chunk_regularization(model, p, comm, layout)
            grads = {**grads, "layers": own_rows(grads["layers"], comm, layout)}
            grads = jax.tree_util.tree_map(jnp.add, mean(grads), g_reg)
            return mean(obj) + reg, mean(aux["loss"]), aux["outputs"], grads, s, stats

        obj, loss, outputs, grads, state, stats = self._island(
            chunk_fn, model, params, x, y, state,
            lambda specs, s_specs: (REPLICATED, REPLICATED, SAMPLES, specs, s_specs, REPLICATED))
        return obj, {"loss": loss, "outputs": outputs}, self._like(model, grads, params), state, stats

    def value(self, model, params, x, y, state):
        comm = self.solver.comm

        def chunk_fn(layout, p, xy, s):
            value = data_mean(comm)(self.solver.value(model, p, xy[0], xy[1], s))
            return value + chunk_regularization(model, p, comm, layout)[0]

        return self._island(chunk_fn, model, params, x, y, state, lambda specs, s_specs: REPLICATED)

    def _like(self, model, grads: Any, params: Any) -> Any:
        """A stored gradient as ``params`` are laid out (the real layers in order when they come so)."""
        layout = self.solver.layouts(model.depth)[0]
        return grads if as_stored(params, layout) else canonical_layers(grads, layout)

    def exact(self) -> "RealLayers":
        """The serial (exact) strategy over the same stored stack (``train.on_nonfinite=serial``)."""
        return RealLayers(SerialSolver(), self.solver.layouts)


def as_stored(params: Any, layout: Layout) -> bool:
    """Whether the layer stack of ``params`` comes as the mesh stores it (:func:`stored_rows` rows)."""
    return jax.tree_util.tree_leaves(params["layers"])[0].shape[0] == stored_rows(layout)


class RealLayers:
    """A solver of the whole network given the layer stack as the mesh stores it (:func:`stored_layers`): its real
    layers are taken out in order before it (message: the layer stacks to every device, only where this runs), and
    its layer gradient is laid out as the stack, zero on the zero rows."""

    def __init__(self, solver: Any, layouts: Callable[[int], Any]):
        self.solver, self.layouts = solver, layouts

    def value_and_grad(self, model, params, x, y, state):
        layout = self.layouts(model.depth)[0]
        obj, aux, grads, state, stats = self.solver.value_and_grad(model, canonical_layers(params, layout), x, y,
                                                                   state)
        return obj, aux, stored_layers(grads, layout), state, stats

    def value(self, model, params, x, y, state):
        return self.solver.value(model, canonical_layers(params, self.layouts(model.depth)[0]), x, y, state)


def own_rows(layers: Any, comm: Any, layout: Layout) -> Any:
    """A chunk's stored rows of a per-layer stack (a gradient) with the rows past its real layers (the last chunk's
    tail included) zero (as they are when every chunk's rows are real)."""
    if stored_rows(layout) == layout.depth:
        return layers
    own = own_rows_mask(comm.layer_rank(), layout)
    return jax.tree_util.tree_map(lambda g: jnp.where(own.reshape(-1, *(1,) * (g.ndim - 1)), g, 0), layers)


class ChunkLocal:
    """A layer-parallel solver whose layer parameters, their gradient and optimiser state live only on the MPI rank
    of their chunk (``parallel=mpi``, ``parallel.layers`` = P > 1): chunk p holds layers p·s … (p+1)·s − 1 (s the
    layout's stride), the last chunk the rest, and each rank's ``params["layers"]`` are those real layers. Only for
    the solve are they extended to the static ``Layout.rows`` by identity steps' weights (the last layer repeated, as
    :func:`~lpt.mgrit.hierarchy.pad_states` pads a stack; their step sizes are 0), and the solver's
    (``local_layers``) gradient is cut back to the real layers: the pad layers never reach the optimiser, the
    regularisation, the norm or a checkpoint. Opening and classifier are replicated. The regularisation of the whole
    stack is added here from the chunk and a one-layer halo (:func:`chunk_regularization`). Every other attribute is
    the wrapped solver's."""

    def __init__(self, solver: Any):
        self.solver = solver

    def __getattr__(self, name: str) -> Any:
        return getattr(self.solver, name)

    def init_state(self, model, params, x):
        return self.solver.init_state(model, params, x)

    def value_and_grad(self, model, params, x, y, state):
        obj, aux, grads, state, stats = self.solver.value_and_grad(model, self._padded(model, params), x, y, state)
        # the gradient of the real layers only (a pad layer's is zero: step(θ, y, 0) = y)
        grads = {**grads, "layers": jax.tree_util.tree_map(lambda g, a: g[: a.shape[0]], grads["layers"],
                                                           params["layers"])}
        reg, g_reg = chunk_regularization(model, params, self.solver.comm)
        return obj + reg, aux, jax.tree_util.tree_map(jax.numpy.add, grads, g_reg), state, stats

    def value(self, model, params, x, y, state):
        return self.solver.value(model, self._padded(model, params), x, y, state) + chunk_regularization(
            model, params, self.solver.comm)[0]

    def _padded(self, model, params):
        """``params`` with this chunk's layers extended to the solve's rows (n_local, or the last chunk's MGRIT
        steps and serial tail) by identity steps' weights."""
        rows = self.solver.layouts(model.depth)[0].rows
        return {**params, "layers": jax.tree_util.tree_map(lambda a: pad_states(a, rows), params["layers"])}

    def exact(self) -> "ChunkLocal":
        """The serial (exact) strategy on the same chunks (``train.on_nonfinite=serial``): the layers are
        gathered for the serial propagation, the gradient is this chunk's."""
        return ChunkLocal(_ExactChunks(self.solver))


class _ExactChunks:
    """The exact step of a ``local_layers`` MGRIT solver (its serial branch) as a solver."""

    def __init__(self, solver: Any):
        self.comm, self.layouts = solver.comm, solver.layouts
        self._exact = solver._exact

    def value_and_grad(self, model, params, x, y, state):
        return (*self._exact(model, params, x, y), state, {})

    def value(self, model, params, x, y, state):
        return self._exact(model, params, x, y, grad=False)


def chunk_regularization(model, params: Any, comm: Any, layout: Layout | None = None) -> tuple[Any, Any]:
    """The regularisation R(θ) of the whole network and its gradient, from this chunk's layers θ_a..θ_b and the
    previous chunk's last layer θ_{a−1} (a halo, received by ``comm.shift``):

        R = Σ_chunks [R(θ_{a−1}, θ_a, …, θ_b) − R(θ_{a−1})] + R(no layers),

    non-layer entries zero in the chunk terms, as they are in the last term. Exact for regularisers that sum
    per-layer terms and terms of neighbouring layers (γ_tik/2 Σ‖θ_n‖², γ_ddt/2 Σ‖(θ_n − θ_{n−1})/h‖²) plus terms
    of the other parameters (γ_class/2 ‖W_c‖²): the halo's own term cancels, the difference across the chunk
    boundary is counted once. The first chunk's halo is its own first layer (a zero difference). The halo's
    gradient belongs to the previous chunk's last layer: it is sent back (a reverse shift).

    Without ``layout`` every row of ``params["layers"]`` is a real layer (MPI ranks: :class:`ChunkLocal`); with it
    the chunk has ``layout.rows`` rows of which the first ``layout.stride`` (the last chunk's
    ``layout.last_rows``: its MGRIT steps and the serial tail) are real (the mesh's stored stack:
    :func:`stored_layers`); the rest have a zero gradient."""
    layers = params["layers"]
    rows = jax.tree_util.tree_leaves(layers)[0].shape[0]
    stride, last = (layout.stride, layout.last_rows) if layout is not None else (rows, rows)
    zeros = {k: jax.tree_util.tree_map(jnp.zeros_like, v) for k, v in params.items() if k != "layers"}
    # message: one layer's weights from the previous chunk (its last real one: every chunk but the last has stride)
    halo = jax.tree_util.tree_map(lambda a: comm.shift(a[stride - 1:stride], a[:1]), layers)

    def chunk_term(halo, real):
        joined = jax.tree_util.tree_map(lambda h, a: jnp.concatenate([h, a]), halo, real)
        return model.regularization({**zeros, "layers": joined}) - model.regularization({**zeros, "layers": halo})

    def on(count: int) -> Callable[[], Any]:  # the chunk's first ``count`` rows real (no message in here)
        def term():
            real = jax.tree_util.tree_map(lambda a: a[:count], layers)
            part, (g_halo, g_real) = jax.value_and_grad(chunk_term, argnums=(0, 1))(halo, real)
            return part, g_halo, jax.tree_util.tree_map(lambda g: pad_zeros(g, rows), g_real)

        return term

    if last == stride:
        part, g_halo, g_layers = on(stride)()
    else:
        part, g_halo, g_layers = jax.lax.cond(comm.layer_rank() == layout.chunks - 1, on(last), on(stride))
    # message: the halo's gradient back to the previous chunk, onto its last real layer (nothing to the last chunk)
    g_layers = jax.tree_util.tree_map(
        lambda g, gh: g.at[stride - 1:stride].add(comm.shift(gh, jnp.zeros_like(gh), reverse=True)), g_layers, g_halo)
    empty = jax.tree_util.tree_map(lambda a: a[:0], layers)
    rest = {k: v for k, v in params.items() if k != "layers"}
    once, g_rest = jax.value_and_grad(lambda r: model.regularization({**r, "layers": empty}))(rest)
    # message: one scalar, summed over the chunks
    return comm.layer_sum(part) + once, {**g_rest, "layers": g_layers}
