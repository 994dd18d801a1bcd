"""How the layers are cut into chunks, one per layer rank (DESIGN §4), and padded so that every level splits.

Every solve — on one device or many — uses the same hierarchy, fixed by the real depth N: level sizes and
coarsening factors from :func:`level_shapes`. The fine level is padded with identity steps (h = 0,
Φ(u) = u exactly) to ``n_pad`` steps, a multiple of

* M = ∏ m_ℓ over all levels with intervals, so that every level has whole intervals and the C-points of the
  reversed (adjoint) index coincide with the forward ones; and
* P·∏_{ℓ<d} m_ℓ, so that each of the P chunks holds whole intervals on the first d ("distributed") levels.

The first level with fewer intervals than chunks (and the coarsest level) is gathered and solved
redundantly on every chunk. Since every MGRIT update at a point depends only on earlier points, identity
steps appended after the last layer (and, on the reversed index, an exact constant prefix) change no
iterate at a real point: all processor grids produce the same iterates.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lpt.mgrit.hierarchy import LevelShape, level_shapes
from lpt.mgrit.options import MGRITOptions


class Layout(NamedTuple):
    """Static chunking of one solve: real depth ``n``, padded depth ``n_pad``, ``chunks`` (layer ranks),
    global level ``shapes`` of the padded problem, and the number ``dist`` of chunked levels."""

    n: int
    n_pad: int
    chunks: int
    shapes: tuple[LevelShape, ...]
    dist: int

    @property
    def local_shapes(self) -> tuple[LevelShape, ...]:
        """Chunk-local sizes of the chunked levels, followed by the (chunk-local) size of the gathered level."""
        local = tuple(LevelShape(s.n // self.chunks, s.m) for s in self.shapes[: self.dist])
        return (*local, LevelShape(self.shapes[self.dist].n // self.chunks, 0))

    @property
    def n_local(self) -> int:
        """Fine steps per chunk."""
        return self.n_pad // self.chunks


def _cfactors(n: int, options: MGRITOptions) -> tuple[int, ...]:
    return tuple(s.m for s in level_shapes(n, options)[:-1])


def _dist_levels(n: int, options: MGRITOptions, chunks: int) -> int:
    """Levels on which every chunk holds at least one whole interval (all of them for one chunk)."""
    real = level_shapes(n, options)
    d = 0
    while d < len(real) - 1 and (chunks == 1 or real[d].n_coarse >= chunks):
        d += 1
    return d


def pad_multiple(n: int, options: MGRITOptions, chunks: int) -> int:
    """The number the padded depth must be a multiple of (see the module docstring)."""
    ms = _cfactors(n, options)
    return math.lcm(math.prod(ms), chunks * math.prod(ms[: _dist_levels(n, options, chunks)]))


def make_layout(n: int, options: MGRITOptions, chunks: int = 1, multiple: int = 1) -> Layout:
    """The layout of a depth-``n`` solve over ``chunks`` layer ranks; ``n_pad`` is also a multiple of ``multiple``
    (to share one padding between the forward and the adjoint solve).

    Raises:
        ValueError: when the finest level has fewer intervals than chunks (too many layer ranks).
    """
    ms = _cfactors(n, options)
    d = _dist_levels(n, options, chunks)
    if chunks > 1 and d == 0:
        intervals = level_shapes(n, options)[0].n_coarse if ms else 0
        raise ValueError(
            f"parallel.layers={chunks} is more than the finest MGRIT level allows: depth {n} with "
            f"solver.cfactor={options.cfactor_at(0)} gives {intervals} coarse intervals (max_levels="
            f"{options.max_levels}); use at most {max(intervals, 1)} layer ranks, or a greater depth")
    q = math.lcm(pad_multiple(n, options, chunks), multiple)
    n_pad = -(-n // q) * q
    sizes = [n_pad // math.prod(ms[:lvl]) for lvl in range(len(ms) + 1)]
    shapes = tuple(LevelShape(s, m) for s, m in zip(sizes, (*ms, 0)))
    return Layout(n=n, n_pad=n_pad, chunks=chunks, shapes=shapes, dist=d)


def chunk(tree: Any, rank: Any, size: int) -> Any:
    """The ``rank``-th block of ``size`` entries along axis 0 of every leaf (``rank`` may be traced)."""
    return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, rank * size, size), tree)


def chunk_states(u: jnp.ndarray, rank: Any, size: int) -> jnp.ndarray:
    """States of a chunk with its left halo point: u[rank·size : (rank+1)·size + 1]."""
    return jax.lax.dynamic_slice_in_dim(u, rank * size, size + 1)
