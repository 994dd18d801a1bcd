"""Memory a training step needs on one device, estimated before anything is compiled, and the check that stops
a run that cannot fit (issue 13, item 4).

The estimate is exact for the training state (parameters and optimiser state including the L-BFGS history, this
device's shard of them when they are layer-sharded; MGRIT warm-start states of this device's layer chunk: their
shapes by :func:`jax.eval_shape`) and the gradient, plus ``k`` arrays of layer states (N_local + 1) × batch ×
state size (the state size includes the image of conv states), with ``k`` calibrated per platform against XLA's
memory analysis of the compiled step (argument + output − aliased + temporary bytes; ``python
scripts/bench_memory.py --estimate`` prints both and their ratio): :data:`STATE_ARRAYS`. On the configurations of
``tests/test_memory.py`` the estimate is within 35 % of XLA's figure on CPU (the test) and on an NVIDIA H200
(the same configurations and three full presets, measured with that command; not in CI, which has no GPU).
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lpt.config.run import LBFGSOptions, ParallelOptions
from lpt.parallel.sharded import ChunkLocal, LayerSharded, layer_axis, stored_axis, stored_layers, stored_rows

STATE_ARRAYS = {
    "cpu": {("serial", "dense"): 1.1, ("serial", "conv"): 2.7, ("mgrit", "dense"): 8.0, ("mgrit", "conv"): 8.0},
    "gpu": {("serial", "dense"): 3.3, ("serial", "conv"): 3.0, ("mgrit", "dense"): 7.3, ("mgrit", "conv"): 24.0},
}
"""Arrays of layer states (N + 1) × batch × state size that a step holds at its peak besides the training state,
by platform, solver and layer kind, from ``python scripts/bench_memory.py --estimate`` (XLA's figure less the
training state, over the bytes of one such array).

CPU (jax 0.10): backpropagation through the serial scan keeps about one (dense) or three (conv: the residuals of
the convolutions); the MGRIT step (forward and adjoint states of every level, FAS right-hand sides, relaxation
temporaries, the layer-gradient pass) seven to nine; measured dense 1.07 / 7.0–8.5 (peaks, N = 64 and 128 at
width 16, and N = 4096 at width 64), conv 2.4–3.0 / 7.3–8.6 (MNIST, conv and conv2, N = 16 and 64). Dense MGRIT was
11.2 before the F-relaxation read its per-step data in place and the state norm stopped stacking the states
(2026-12-05): XLA's figure of the N = 64 step fell from 137.7 to 109.5 MB, of the cold-started N = 128 one from 385.4
to 289.6 MB, of ``mnist_4096``'s from 3987 to 3576 MB.

GPU (NVIDIA H200, jax 0.11.2): serial dense 3.3, conv 3.0; MGRIT dense 5.8–7.3 (peaks, N = 64 to 4096; with
L-BFGS 6.1, and 9.0 for ``indian_pines_512``, besides the line search's), conv 20.5–28.3 (``mnist_4096``, MNIST
N = 16). The conv figure is about three times the CPU's, likely because ``solver.interval_batch=auto`` relaxes
all intervals of a level at once on accelerators and image states a few intervals at a time on CPU. Other
accelerators (TPU) take the GPU's figures, unmeasured. The GPU's figures were measured before the change of
2026-12-05 above, which likely lowered them there too (an estimate on the high side; not measured: no GPU since)."""
LINE_SEARCH_ARRAYS = {"cpu": 5.0, "gpu": 2.0}
"""More arrays of layer states for the L-BFGS line search (its trial forward solves), by platform: on CPU
``indian_pines_512`` needs 7.8 besides the MGRIT step's 8 (its line search's peak did not fall with the MGRIT step's
in 2026-12-05's change) and dense N = 64 with L-BFGS 2.6; on the H200 2 (measured with 7.3 for the step)."""


class MemoryEstimate(NamedTuple):
    """Bytes on one device: training ``state``, ``gradient``, ``layer_states`` (the k arrays), ``total``."""

    state: int
    gradient: int
    layer_states: int

    @property
    def total(self) -> int:
        return self.state + self.gradient + self.layer_states


def _nbytes(tree: Any, depth: int = 0, layer_chunks: int = 1, split_axis=stored_axis, rows: int = 0) -> int:
    """Bytes of ``tree`` on one device; with ``layer_chunks`` > 1 the leaves that ``split_axis`` splits (the mesh:
    layer stacks and matrices, :func:`stored_axis`; MPI: layer stacks, :func:`_chunk_axis`) are split over that
    many devices, evenly or, with ``rows``, ``rows`` of the ``depth`` layers on this device."""
    def size(path, leaf) -> float:
        full = math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
        split = layer_chunks > 1 and split_axis(path, leaf.shape, depth, layer_chunks) is not None
        return (full * rows // depth if rows else full // layer_chunks) if split else full

    return int(sum(size(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)))


def estimate_step_memory(model, solver, optimizer, x: jax.ShapeDtypeStruct, *, line_search: bool = False,
                         data_ranks: int = 1) -> MemoryEstimate:
    """The estimate for a step on a batch shaped like ``x`` (the whole batch; ``data_ranks`` share it). A
    :class:`~lpt.parallel.sharded.LayerSharded` solver keeps the parameters, their gradient and optimiser state
    split over its layer chunks (:func:`~lpt.parallel.sharded.stored_axis`; layer stacks of the layout's
    :attr:`~lpt.mgrit.layout.Layout.rows` rows each), a
    :class:`~lpt.parallel.sharded.ChunkLocal` one (MPI) the real layers of the largest chunk of its layer stacks (the
    layout's stride, or the last chunk's rest)."""
    layer_chunks, split_axis, rows, depth = 1, stored_axis, 0, model.depth
    layout = solver.layouts(model.depth)[0] if hasattr(solver, "layouts") else None
    if isinstance(solver, LayerSharded):
        layer_chunks, depth = solver.grid.layers, stored_rows(layout)
    elif isinstance(solver, ChunkLocal):
        layer_chunks, split_axis = solver.comm.layers, _chunk_axis
        rows = max(layout.stride, layout.last_rows)
    batch = x.shape[0] // data_ranks
    local = jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x.dtype))
    if isinstance(solver, LayerSharded):  # the layer stacks as the mesh stores them (n_local rows per device)
        params = jax.eval_shape(lambda p: stored_layers(p, layout), params)
    opt_state = jax.eval_shape(optimizer.init, params)
    solver_state = jax.eval_shape(lambda p, xb: solver.init_state(model, p, xb), params, local)
    net = getattr(model, "resnet", model)  # a parareal net: the states of the ResNet it cuts
    y0 = jax.eval_shape(net.open, jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x.dtype)), local)
    steps, kind = (layout.n_local, "mgrit") if layout is not None else (model.depth, "serial")
    layer = "conv" if net.layer in ("conv", "conv2") else "dense"
    arrays = (STATE_ARRAYS[calibration()][kind, layer]
              + (LINE_SEARCH_ARRAYS[calibration()] if line_search and kind == "mgrit" else 0.0))
    layer_states = int(arrays * (steps + 1) * _nbytes(y0))
    per_device = (params, opt_state)
    return MemoryEstimate(_nbytes(per_device, depth, layer_chunks, split_axis, rows) + _nbytes(solver_state),
                          _nbytes(params, depth, layer_chunks, split_axis, rows), layer_states)


def _chunk_axis(path: tuple, shape: tuple[int, ...], depth: int, layers: int) -> int | None:
    """The layer axis of a layer stack's leaf that MPI ranks split (:class:`~lpt.parallel.sharded.ChunkLocal`, a
    padded depth too): :func:`~lpt.parallel.sharded.layer_axis` of any depth (MPI chunks need not be equal)."""
    return layer_axis(path, shape, depth, 1)


def memory_message(estimate: MemoryEstimate, available: int, cfg) -> str | None:
    """The one line that stops a run whose estimate exceeds ``available`` bytes (None: it fits)."""
    if estimate.total <= available:
        return None
    grid = cfg["parallel"]
    advice = [f"a smaller train.batch_size (now {cfg['train'].get('batch_size') or 'the full training set'})"]
    if cfg["solver"].get("name") == "mgrit":
        advice.append(f"more layer ranks (parallel.layers={grid.get('layers', ParallelOptions.layers)})")
    advice.append(f"a smaller model.depth ({cfg['model'].get('depth')}) or model.width ({cfg['model'].get('width')})")
    if cfg["optimizer"].get("name") == "lbfgs":
        memory = cfg["optimizer"].get("memory_size", LBFGSOptions.memory_size)
        advice.append(f"a shorter optimizer.memory_size ({memory})")
    return (f"the training step needs about {gib(estimate.total)} per device (training state "
            f"{gib(estimate.state)}, layer states {gib(estimate.layer_states)}), more than the {gib(available)} "
            f"of this device: choose " + ", ".join(advice))


def calibration() -> str:
    """The key of :data:`STATE_ARRAYS` for JAX's default backend: "cpu", else "gpu" (accelerators)."""
    return "cpu" if jax.default_backend() == "cpu" else "gpu"


def device_memory() -> int:
    """Memory of the accelerator if JAX reports it, else the host's physical memory."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - no device statistics: fall back to host memory
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"
