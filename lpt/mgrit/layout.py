"""How the layers are cut into chunks, one per layer rank (DESIGN §4), and padded so that every level splits.

Every solve — on one device or many — uses the same hierarchy, fixed by the real depth N: the number of
levels and the coarsening factors from :func:`level_shapes`, each level ℓ with n_ℓ = ⌈n_{ℓ−1}/m_{ℓ−1}⌉ steps
padded with identity steps (h = 0, Φ(u) = u exactly) to its own whole intervals, p_ℓ = m_ℓ⌈n_ℓ/m_ℓ⌉
(:attr:`LevelShape.padded`): after its last step in the forward solve, before its first on the reversed index of
the adjoint solve, so that the intervals of every level are anchored at layer 0 in both. N = 1025 with cfactor 4
thus runs 1028 fine steps (not 2048, the next multiple of ∏ m_ℓ = 4⁵).

Chunks. On P > 1 layer ranks the first d ("distributed") levels are cut at the fine layers b_p = p·s, s (the
``stride``) a multiple of q = ∏_{ℓ<d} m_ℓ, so every boundary is a C-point of every chunked level: chunks
0 … P−2 hold s fine steps (s/m_0 on level 1, …), the last chunk the rest, n − (P−1)·s real steps, padded per
level to its own whole intervals — exactly the padding of the one-chunk solve, so the levels of all chunks add
up to the global ones. In SPMD every chunk's arrays of level ℓ have one static size L_ℓ (:attr:`Layout.
local_shapes`, the largest chunk's); a chunk with fewer steps holds *dead* identity steps at its local end (on the
adjoint's reversed index too: its chunk-local arrays hold the reversed steps first), which no real point ever
sees: a chunk sends its last real C-point as the halo, and the gather to the first gathered level takes only the
real points of each chunk. That level and the coarser ones are solved redundantly on every chunk. Since every
MGRIT update at a point depends only on earlier points, all processor grids produce the same iterates at the
real points. s and d are chosen to minimise the largest chunk's steps per cycle.

Serial tail. Where the depth N is not a multiple of ∏ m_ℓ, the training solver (:func:`paired_layouts` with
``tail``) may solve only the first N − r layers by MGRIT and propagate the last r layers serially as part of the
head (y_N = Φ_{N−1}∘…∘Φ_{N−r}(y_{N−r}), once per solve, not per cycle), r the fewest layers that leave a depth
without padding (:func:`serial_tail`): N − r splits into whole intervals on every level and evenly over the
chunks that divide it, so N = 1025 does one cycle's work of N = 1024 plus 3 layer steps per gradient. r depends
on N and the options only, so every processor grid solves the same problem and produces the same iterates. The
tail's layers are stored on the last chunk, after its MGRIT layers (:attr:`Layout.rows`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lpt.mgrit.hierarchy import LevelShape, level_shapes, pad_states, pad_zeros
from lpt.mgrit.options import MGRITOptions
from lpt.model.propagate import Step, propagate


class ChunkCounts(NamedTuple):
    """Per chunk (in chunk order) the steps of one level: ``real`` ones and ``padded`` to whole intervals."""

    real: tuple[int, ...]
    padded: tuple[int, ...]


class Layout(NamedTuple):
    """Static chunking of one solve: real depth ``n``, padded fine depth ``n_pad`` (of the whole solve), ``chunks``
    (layer ranks), global level ``shapes`` of the padded problem, the number ``dist`` of chunked levels, the fine
    steps ``stride`` of every chunk but the last, and the static fine steps ``n_local`` of a chunk's arrays; the
    ``tail`` layers after the ``n`` solved by MGRIT are propagated serially (see the module's "Serial tail")."""

    n: int
    n_pad: int
    chunks: int
    shapes: tuple[LevelShape, ...]
    dist: int
    stride: int
    n_local: int
    tail: int = 0

    @property
    def depth(self) -> int:
        """The network's layers: the ``n`` of the MGRIT solve and the serial ``tail``."""
        return self.n + self.tail

    @property
    def last_rows(self) -> int:
        """Layers the last chunk holds: its real MGRIT steps and the tail."""
        return self.last_real + self.tail

    @property
    def rows(self) -> int:
        """Rows of every chunk's stored layer stack: its ``n_local`` steps, and room for the last chunk's tail."""
        return max(self.n_local, self.last_rows)

    @property
    def counts(self) -> tuple[ChunkCounts, ...]:
        """Per-chunk steps of the chunked levels and of the first gathered one (padded = real there)."""
        real = (self.stride,) * (self.chunks - 1) + (self.n - (self.chunks - 1) * self.stride,)
        out = []
        for shape in self.shapes[: self.dist]:
            padded = tuple(-(-r // shape.m) * shape.m for r in real)
            out.append(ChunkCounts(real, padded))
            real = tuple(c // shape.m for c in padded)
        return (*out, ChunkCounts(real, real))

    @property
    def local_shapes(self) -> tuple[LevelShape, ...]:
        """Chunk-local (static) sizes of the chunked levels, followed by the chunk-local size of the gathered
        level: the largest chunk's, and at least the restricted size of the level above."""
        local, size = [], self.n_local
        for shape, counts in zip(self.shapes[: self.dist], self.counts):
            size = -(-max(size, *counts.padded) // shape.m) * shape.m
            local.append(LevelShape(size, shape.m))
            size //= shape.m
        return (*local, LevelShape(size, 0))

    @property
    def work(self) -> int:
        """Steps one chunk relaxes per sweep of every level: its chunked levels' and all of the gathered ones."""
        return sum(s.n for s in self.local_shapes[:-1]) + sum(s.padded for s in self.shapes[self.dist:])

    @property
    def real_shapes(self) -> tuple[LevelShape, ...]:
        """The levels of the unpadded depth: n, ⌈n/m_0⌉, … (the same coarsening factors)."""
        return _shapes(self.n, tuple(s.m for s in self.shapes[:-1]))

    @property
    def extra_work(self) -> float:
        """Steps the padding adds to all levels, relative to the levels of the unpadded depth (n, ⌈n/m_0⌉, …):
        Σ_ℓ p_ℓ / Σ_ℓ n_ℓ − 1 (a level's relaxation costs in proportion to its steps)."""
        return sum(s.padded for s in self.shapes) / sum(s.n for s in self.real_shapes) - 1

    @property
    def extra_work_per_chunk(self) -> float:
        """Steps the largest chunk relaxes per sweep of every level (:attr:`work`) relative to the real steps split
        evenly, Σ_{chunked ℓ} n_ℓ / P + Σ_{gathered ℓ} n_ℓ (n_ℓ the levels of the unpadded depth), minus 1: the
        padding and the uneven split together; on one chunk :attr:`extra_work`."""
        real = self.real_shapes
        even = sum(s.n for s in real[: self.dist]) / self.chunks + sum(s.n for s in real[self.dist:])
        return self.work / even - 1

    @property
    def last_real(self) -> int:
        """Real fine steps of the last chunk (its local index of y_N)."""
        return self.n - (self.chunks - 1) * self.stride


def _cfactors(n: int, options: MGRITOptions) -> tuple[int, ...]:
    return tuple(s.m for s in level_shapes(n, options)[:-1])


def _shapes(n_pad: int, ms: tuple[int, ...]) -> tuple[LevelShape, ...]:
    shapes, size = [], n_pad
    for m in ms:
        shapes.append(LevelShape(size, m))
        size = shapes[-1].n_coarse
    return (*shapes, LevelShape(size, 0))


def _candidates(n: int, ms: tuple[int, ...], chunks: int, multiple: int, stride: int | None):
    """(dist, stride) pairs of a depth-n layout on ``chunks`` > 1 chunks: every chunk holds at least one interval
    of every chunked level, the stride a multiple of ``multiple`` (or the given ``stride``)."""
    for d in range(1, len(ms) + 1):
        q = math.lcm(math.prod(ms[:d]), multiple)
        if stride is not None:
            if stride % math.prod(ms[:d]) == 0:
                yield d, stride
            continue
        top = (n - 1) // ((chunks - 1) * q)
        for k in {-(-n // (chunks * q)), n // (chunks * q)}:
            if 1 <= k <= top:
                yield d, k * q


def _layout(n: int, ms: tuple[int, ...], chunks: int, d: int, stride: int) -> Layout:
    n_pad = -(-n // ms[0]) * ms[0] if ms else n
    last = n - (chunks - 1) * stride
    n_local = max(stride if chunks > 1 else 0, -(-last // ms[0]) * ms[0] if ms else last)
    return Layout(n=n, n_pad=n_pad, chunks=chunks, shapes=_shapes(n_pad, ms), dist=d, stride=stride, n_local=n_local)


def make_layout(n: int, options: MGRITOptions, chunks: int = 1, multiple: int = 1,
                stride: int | None = None) -> Layout:
    """The layout of a depth-``n`` solve over ``chunks`` layer ranks, of the least work per chunk; its stride a
    multiple of ``multiple`` (or ``stride`` itself: to share the chunks between the forward and the adjoint solve).

    Raises:
        ValueError: when the finest level has fewer intervals than chunks (too many layer ranks).
    """
    ms = _cfactors(n, options)
    if chunks == 1:
        return _layout(n, ms, 1, len(ms), 0)
    layouts = [_layout(n, ms, chunks, d, s) for d, s in _candidates(n, ms, chunks, multiple, stride)]
    if not layouts:
        intervals = level_shapes(n, options)[0].n_coarse if ms else 0
        raise ValueError(
            f"parallel.layers={chunks} is more than the finest MGRIT level allows: depth {n} with "
            f"solver.cfactor={options.cfactor_at(0)} gives {intervals} coarse intervals (max_levels="
            f"{options.max_levels}); use at most {max(intervals, 1)} layer ranks, or a greater depth")
    return min(layouts, key=lambda layout: (layout.work, -layout.dist))


def serial_tail(n: int, options: MGRITOptions) -> int:
    """The fewest layers r that the training solver propagates serially after an MGRIT solve of n − r layers such
    that n − r needs no padding (every coarsened level a whole number of intervals: n − r = 1024 for n = 1025
    with cfactor 4), or 0 where n needs none or that costs more than the padding: r layers cost about 3r layer
    steps per gradient (forward, adjoint, weight gradient), the padding Σ_ℓ p_ℓ(n) − Σ_ℓ p_ℓ(n − r) steps per
    sweep of all levels (several sweeps per cycle, several cycles per solve)."""
    padded = lambda depth: sum(s.padded for s in level_shapes(depth, options))  # noqa: E731
    whole = lambda depth: all(s.n % s.m == 0 for s in level_shapes(depth, options)[:-1])  # noqa: E731
    if whole(n):
        return 0
    full, r = padded(n), 1
    while r < n - 1 and 3 * r <= full - (n - r):  # padded(n − r) ≥ n − r: no larger r can pay
        if whole(n - r) and 3 * r <= full - padded(n - r):
            return r
        r += 1
    return 0


def paired_layouts(n: int, fwd: MGRITOptions, bwd: MGRITOptions, chunks: int = 1,
                   tail: bool = False) -> tuple[Layout, Layout]:
    """The layouts of the forward and the adjoint solve of one depth-``n`` network: the same chunks (stride and
    static fine size: the adjoint runs on the forward states), each solve its own levels, padding and chunked
    levels; with ``tail`` both of the first n − r layers and a serial tail of r = :func:`serial_tail` layers."""
    r = serial_tail(n, fwd) if tail else 0
    n -= r
    ms = _cfactors(n, bwd)
    try:
        f_layout = make_layout(n, fwd, chunks, multiple=ms[0] if ms else 1)
        b_layout = make_layout(n, bwd, chunks, stride=f_layout.stride if chunks > 1 else None)
    except ValueError as error:  # name the network's depth, not only its MGRIT part
        if not r:
            raise
        raise ValueError(str(error).replace(f"depth {n} ", f"depth {n + r} ({n} by MGRIT, {r} serially) ", 1)) from None
    n_local = max(f_layout.n_local, b_layout.n_local)
    return f_layout._replace(n_local=n_local, tail=r), b_layout._replace(n_local=n_local, tail=r)


def chunk(tree: Any, rank: Any, layout: Layout) -> Any:
    """Chunk ``rank``'s ``n_local`` layers (``rank`` may be traced) of every leaf of a layer stack (leading axis
    ≥ n): layers rank·stride …, past the stack's end the last layer repeated (identity steps' weights)."""
    size, length = layout.n_local, (layout.chunks - 1) * layout.stride + layout.n_local
    return jax.tree_util.tree_map(
        lambda a: jax.lax.dynamic_slice_in_dim(pad_states(a, max(length, a.shape[0])), rank * layout.stride, size),
        tree)


def chunk_real(tree: Any, rank: Any, layout: Layout) -> Any:
    """Chunk ``rank``'s ``n_local`` entries of every leaf of a per-layer stack (n, …: step sizes, a gradient),
    zero past its real layers (identity steps' step sizes; no gradient for a dead or padding step)."""
    length = (layout.chunks - 1) * layout.stride + layout.n_local
    own = own_steps(rank, layout)

    def one(a: jnp.ndarray) -> jnp.ndarray:
        local = jax.lax.dynamic_slice_in_dim(pad_zeros(a, max(length, a.shape[0])), rank * layout.stride,
                                             layout.n_local)
        return jnp.where(own.reshape(-1, *(1,) * (a.ndim - 1)), local, jnp.zeros_like(local))

    return jax.tree_util.tree_map(one, tree)


def own_steps(rank: Any, layout: Layout) -> jnp.ndarray:
    """Whether each of chunk ``rank``'s ``n_local`` steps (``rank`` may be traced) is one of its real layers."""
    real = jnp.where(jnp.asarray(rank) == layout.chunks - 1, layout.last_real, layout.stride)
    return jnp.arange(layout.n_local) < real


def own_rows_mask(rank: Any, layout: Layout) -> jnp.ndarray:
    """Whether each of chunk ``rank``'s :attr:`Layout.rows` stored rows holds one of its real layers (the last
    chunk's serial tail included)."""
    real = jnp.where(jnp.asarray(rank) == layout.chunks - 1, layout.last_rows, layout.stride)
    return jnp.arange(layout.rows) < real


def stored_chunk(tree: Any, rank: Any, layout: Layout) -> Any:
    """Chunk ``rank``'s :attr:`Layout.rows` rows of every leaf of a whole layer stack (``layout.depth``, …: a
    gradient): its real layers (the last chunk's tail included) and zero rows after them."""
    length = (layout.chunks - 1) * layout.stride + layout.rows
    own = own_rows_mask(rank, layout)

    def one(a: jnp.ndarray) -> jnp.ndarray:
        local = jax.lax.dynamic_slice_in_dim(pad_zeros(a, max(length, a.shape[0])), rank * layout.stride, layout.rows)
        return jnp.where(own.reshape(-1, *(1,) * (a.ndim - 1)), local, jnp.zeros_like(local))

    return jax.tree_util.tree_map(one, tree)


def mgrit_part(theta: Any, hs: jnp.ndarray, layout: Layout) -> tuple[Any, jnp.ndarray]:
    """Weights and step sizes of the first ``layout.n`` layers of a whole stack: those MGRIT solves."""
    return jax.tree_util.tree_map(lambda a: a[: layout.n], theta), hs[: layout.n]


def tail_part(theta: Any, hs: jnp.ndarray, layout: Layout) -> tuple[Any, jnp.ndarray] | None:
    """Weights and step sizes (θ, h) of the serial tail's layers of a whole stack, or None without a tail."""
    if not layout.tail:
        return None
    return jax.tree_util.tree_map(lambda a: a[layout.n: layout.depth], theta), hs[layout.n: layout.depth]


def through_tail(step: Step, tail: tuple[Any, jnp.ndarray] | None, y: jnp.ndarray) -> jnp.ndarray:
    """y_N from y_{N−r}: the serial tail's steps ``tail`` = (θ, h) after ``y``, or ``y`` itself (None)."""
    return y if tail is None else propagate(step, *tail, y)


def join_tail(grads: Any, g_tail: Any) -> Any:
    """The layer gradient of the whole stack: the MGRIT part's followed by the serial tail's (None: no tail)."""
    if g_tail is None:
        return grads
    return jax.tree_util.tree_map(lambda g, t: jnp.concatenate([g, t.astype(g.dtype)]), grads, g_tail)


def spread(tree: Any, layout: Layout) -> Any:
    """A layer stack (depth, …) as the chunks' arrays one after the other (chunks·rows, …): :func:`chunk` of every
    rank (with the tail's room), concatenated."""
    index = np.minimum(np.arange(layout.rows)[None] + layout.stride * np.arange(layout.chunks)[:, None],
                       layout.depth - 1).reshape(-1)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), tree)


def unspread(tree: Any, layout: Layout) -> Any:
    """The real layers (depth, …) of the chunks' arrays one after the other (chunks·rows, …): the inverse of
    :func:`spread` (a gradient's dead and padding entries left out)."""
    index = real_rows(layout)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), tree)


def real_rows(layout: Layout) -> np.ndarray:
    """The rows of the chunks' arrays one after the other (chunks·rows) that hold the real layers (the tail's
    too), in order."""
    return np.concatenate([p * layout.rows + np.arange(r)
                           for p, r in enumerate((layout.stride,) * (layout.chunks - 1) + (layout.last_rows,))])
