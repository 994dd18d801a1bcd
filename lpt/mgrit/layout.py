"""How the layers are cut into chunks, one per layer rank (DESIGN §4), and padded so that every level splits.

Every solve — on one device or many — uses the same hierarchy, fixed by the real depth N: the number of
levels and the coarsening factors from :func:`level_shapes`. Padding with identity steps (h = 0, Φ(u) = u
exactly) is kept to what each level needs:

* the fine level is padded to ``n_pad`` steps, a multiple of m_0 (whole intervals) and, on P > 1 chunks, of
  P·∏_{ℓ<d} m_ℓ, so that each chunk holds whole intervals on the first d ("distributed") levels;
* every coarser level ℓ with n_ℓ = ⌈n_{ℓ−1}/m_{ℓ−1}⌉ steps is padded by its own solve to m_ℓ⌈n_ℓ/m_ℓ⌉
  (:attr:`LevelShape.padded`) — after its last step in the forward solve, before its first on the reversed
  index of the adjoint solve, so that the intervals of every level are anchored at layer 0 in both.

N = 1025 with cfactor 4 thus runs 1028 fine steps (not 2048, the next multiple of ∏ m_ℓ = 4⁵).

The first level with fewer intervals than chunks (and the coarsest level) is gathered and solved
redundantly on every chunk. Since every MGRIT update at a point depends only on earlier points, identity
steps appended after the last layer (and, on the reversed index, an exact constant prefix) change no
iterate at a real point: all processor grids produce the same iterates, however much each pads.
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
    def extra_work(self) -> float:
        """Steps the padding adds to all levels, relative to the levels of the unpadded depth (n, ⌈n/m_0⌉, …):
        Σ_ℓ p_ℓ / Σ_ℓ n_ℓ − 1 (a level's relaxation costs in proportion to its steps)."""
        real = _shapes(self.n, tuple(s.m for s in self.shapes[:-1]))
        return sum(s.padded for s in self.shapes) / sum(s.n for s in real) - 1

    @property
    def n_local(self) -> int:
        """Fine steps per chunk."""
        return self.n_pad // self.chunks


def _cfactors(n: int, options: MGRITOptions) -> tuple[int, ...]:
    return tuple(s.m for s in level_shapes(n, options)[:-1])


def _max_dist_levels(n: int, options: MGRITOptions, chunks: int) -> int:
    """Levels on which every chunk can hold at least one whole interval (all of them for one chunk)."""
    real = level_shapes(n, options)
    d = 0
    while d < len(real) - 1 and (chunks == 1 or real[d].n_coarse >= chunks):
        d += 1
    return d


def _multiple(ms: tuple[int, ...], chunks: int, dist: int) -> int:
    """The number the padded fine depth must be a multiple of with ``dist`` chunked levels."""
    if not ms:
        return chunks
    return ms[0] if chunks == 1 else math.lcm(ms[0], chunks * math.prod(ms[:dist]))


def _shapes(n_pad: int, ms: tuple[int, ...]) -> tuple[LevelShape, ...]:
    shapes, size = [], n_pad
    for m in ms:
        shapes.append(LevelShape(size, m))
        size = shapes[-1].n_coarse
    return (*shapes, LevelShape(size, 0))


def _chunk_steps(n: int, ms: tuple[int, ...], chunks: int, dist: int, multiple: int) -> int:
    """Steps one chunk relaxes per cycle, roughly: its share of the chunked levels and all of the gathered ones."""
    q = math.lcm(_multiple(ms, chunks, dist), multiple)
    shapes = _shapes(-(-n // q) * q, ms)
    return sum(s.padded // chunks for s in shapes[:dist]) + sum(s.padded for s in shapes[dist:])


def _dist_levels(n: int, options: MGRITOptions, chunks: int, multiple: int = 1) -> int:
    """The number d of chunked levels: as many as each hold an interval per chunk, unless fewer cost less work per
    chunk — every chunked level multiplies the fine depth's padding by its m_ℓ (N = 1025 on 2 chunks, cfactor 4:
    2048 steps with all 5 levels chunked, 1056 with 2, and ~10 % less work per chunk)."""
    top = _max_dist_levels(n, options, chunks)
    if chunks == 1 or top == 0:
        return top
    ms = _cfactors(n, options)
    return min(range(top, 0, -1), key=lambda d: _chunk_steps(n, ms, chunks, d, multiple))


def pad_multiple(n: int, options: MGRITOptions, chunks: int) -> int:
    """The number the padded fine depth must be a multiple of (see the module docstring)."""
    return _multiple(_cfactors(n, options), chunks, _dist_levels(n, options, chunks))


def make_layout(n: int, options: MGRITOptions, chunks: int = 1, multiple: int = 1) -> Layout:
    """The layout of a depth-``n`` solve over ``chunks`` layer ranks; ``n_pad`` is also a multiple of ``multiple``
    (to share one padding between the forward and the adjoint solve).

    Raises:
        ValueError: when the finest level has fewer intervals than chunks (too many layer ranks).
    """
    ms = _cfactors(n, options)
    d = _dist_levels(n, options, chunks, multiple)
    if chunks > 1 and d == 0:
        intervals = level_shapes(n, options)[0].n_coarse if ms else 0
        raise ValueError(
            f"parallel.layers={chunks} is more than the finest MGRIT level allows: depth {n} with "
            f"solver.cfactor={options.cfactor_at(0)} gives {intervals} coarse intervals (max_levels="
            f"{options.max_levels}); use at most {max(intervals, 1)} layer ranks, or a greater depth")
    q = math.lcm(_multiple(ms, chunks, d), multiple)
    n_pad = -(-n // q) * q
    return Layout(n=n, n_pad=n_pad, chunks=chunks, shapes=_shapes(n_pad, ms), dist=d)


def paired_layouts(n: int, fwd: MGRITOptions, bwd: MGRITOptions, chunks: int = 1) -> tuple[Layout, Layout]:
    """The layouts of the forward and the adjoint solve of one depth-``n`` network: one padded depth (the adjoint
    runs on the forward states), each solve its own levels and chunked levels."""
    n_pad = pad_multiple(n, bwd, chunks)
    while True:  # each layout pads to a multiple of the other's: at most a few rounds, n_pad only grows
        f_layout = make_layout(n, fwd, chunks, multiple=n_pad)
        b_layout = make_layout(n, bwd, chunks, multiple=f_layout.n_pad)
        if b_layout.n_pad == f_layout.n_pad:
            return f_layout, b_layout
        n_pad = b_layout.n_pad


def chunk(tree: Any, rank: Any, size: int) -> Any:
    """The ``rank``-th block of ``size`` entries along axis 0 of every leaf (``rank`` may be traced)."""
    return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, rank * size, size), tree)


def chunk_states(u: jnp.ndarray, rank: Any, size: int) -> jnp.ndarray:
    """States of a chunk with its left halo point: u[rank·size : (rank+1)·size + 1]."""
    return jax.lax.dynamic_slice_in_dim(u, rank * size, size + 1)
