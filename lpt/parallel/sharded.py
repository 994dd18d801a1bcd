"""Running a per-chunk function on the ``mesh`` back-end: ``shard_map`` over the ("data", "layers") mesh.

Parameters and optimiser state are replicated; samples are split along "data"; per-chunk states (the MGRIT
warm start) are split along "layers" (and "data"). The same per-chunk code runs on the ``single`` and ``mpi``
back-ends without a wrapper.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import PartitionSpec as P

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
