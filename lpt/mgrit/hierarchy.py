"""The MGRIT level hierarchy: level sizes (static, Python), per-step data of every level, and grid layouts.

Level ℓ has n_ℓ steps with per-step data d^ℓ_i (layer weights; for the adjoint also primal states) and
step sizes h^ℓ_i. With coarsening factor m_ℓ it is padded to p_ℓ = m_ℓ⌈n_ℓ/m_ℓ⌉ steps by *identity steps*
of step size h = 0 (Φ(u) = u + 0·σ(…) = u exactly), so every level splits into n_{ℓ+1} = p_ℓ/m_ℓ whole
intervals and all intervals are relaxed at once; uneven depths need no special case. The coarse level has
one step per interval (Falgout et al. 2014, §2):

    h^{ℓ+1}_j = Σ_{k<m} h^ℓ_{jm+k},     d^{ℓ+1}_j = restrict(d^ℓ_{jm}, …, d^ℓ_{jm+m−1}).

Layouts. On a level with intervals, step k of interval j (global index jm + k) is stored at ``[k, j]``:
data leaves have shape (m, n_c, …) and step sizes (m, n_c), so relaxation scans over k with all intervals
stacked (no transposes inside the cycles). States are kept as a :class:`Grid` of C-points (n_c+1, …) and
F-points (m−1, n_c, …). The coarsest level keeps the flat layout (n, …) and is solved by a serial sweep.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lpt.mgrit.options import MGRITOptions

Restriction = Callable[[Any, jnp.ndarray], Any]
"""restrict(data_blocks, hs_blocks): interval data (n_c, m, …) and step sizes (n_c, m) → coarse data (n_c, …)."""


class LevelShape(NamedTuple):
    """Static size of one level: ``n`` steps; coarsening factor ``m`` (0 on the coarsest level)."""

    n: int
    m: int

    @property
    def coarsest(self) -> bool:
        return self.m == 0

    @property
    def n_coarse(self) -> int:
        """Number of intervals n_{ℓ+1} = ⌈n/m⌉ (= steps of the next coarser level)."""
        return -(-self.n // self.m)

    @property
    def padded(self) -> int:
        """Steps after padding with identity steps: p = m⌈n/m⌉ (n on the coarsest level)."""
        return self.n if self.coarsest else self.n_coarse * self.m


class Level(NamedTuple):
    """Per-step data and step sizes of one level: layout (m, n_c, …) with intervals, (n, …) on the coarsest."""

    data: Any
    hs: jnp.ndarray


class Grid(NamedTuple):
    """States of a level with intervals: C-points ``c`` (n_c+1, …) and F-points ``f`` (m−1, n_c, …)."""

    c: jnp.ndarray
    f: jnp.ndarray


def level_shapes(n: int, options: MGRITOptions) -> tuple[LevelShape, ...]:
    """Static level sizes: coarsen by m_ℓ until n_ℓ ≤ min_coarse or ℓ = max_levels − 1.

    Example: n = 1000, m = 4, 4 levels → 1000, 250 (padded to 252), 63 (padded to 64), 16 (coarsest).
    """
    shapes: list[LevelShape] = []
    level = 0
    while n > options.min_coarse and level < options.max_levels - 1:
        shape = LevelShape(n, options.cfactor_at(level))
        shapes.append(shape)
        n, level = shape.n_coarse, level + 1
    shapes.append(LevelShape(n, 0))
    return tuple(shapes)


# --- padding and layouts ------------------------------------------------------------------------------
def pad_states(u: jnp.ndarray, length: int, front: bool = False) -> jnp.ndarray:
    """Extend states (n+1, …) to ``length`` points by repeating the last one (the identity steps' solution), or
    with ``front`` the first one (identity steps before the first real one, on a reversed index)."""
    extra = length - u.shape[0]
    if extra == 0:
        return u
    edge = jnp.broadcast_to(u[:1] if front else u[-1:], (extra, *u.shape[1:]))
    return jnp.concatenate([edge, u] if front else [u, edge], axis=0)


def real_states(u: jnp.ndarray, length: int, front: bool = False) -> jnp.ndarray:
    """The ``length`` points of padded states that are not identity padding (inverse of :func:`pad_states`)."""
    return u[u.shape[0] - length:] if front else u[:length]


def pad_zeros(r: jnp.ndarray, length: int, front: bool = False) -> jnp.ndarray:
    """Extend a per-point array (n+1, …) to ``length`` points with zeros (before it with ``front``)."""
    extra = length - r.shape[0]
    if extra == 0:
        return r
    zeros = jnp.zeros((extra, *r.shape[1:]), r.dtype)
    return jnp.concatenate([zeros, r] if front else [r, zeros], axis=0)


def pad_steps(data: Any, hs: jnp.ndarray, length: int, front: bool = False) -> tuple[Any, jnp.ndarray]:
    """Append identity steps (before the first step with ``front``): data repeats the nearest step's (any finite
    value does), step size h = 0."""
    data = jax.tree_util.tree_map(lambda a: pad_states(a, length, front), data)
    return data, pad_zeros(hs, length, front)


def split(u: jnp.ndarray, m: int) -> Grid:
    """Flat states (n_c·m+1, …) → :class:`Grid` with C-points u_{jm} and F-points u_{jm+k} at f[k−1, j]."""
    n_c = (u.shape[0] - 1) // m
    blocks = u[:-1].reshape(n_c, m, *u.shape[1:])
    return Grid(c=u[::m], f=jnp.swapaxes(blocks[:, 1:], 0, 1))


def join(grid: Grid) -> jnp.ndarray:
    """:class:`Grid` → flat states (n_c·m+1, …) in step order (inverse of :func:`split`)."""
    blocks = jnp.swapaxes(jnp.concatenate([grid.c[None, :-1], grid.f], axis=0), 0, 1)
    flat = blocks.reshape(-1, *grid.c.shape[1:])
    return jnp.concatenate([flat, grid.c[-1:]], axis=0)


# --- per-step data of the coarse levels ----------------------------------------------------------------
def inject_first(blocks: Any, hs: jnp.ndarray) -> Any:
    """θ^{ℓ+1}_j = θ^ℓ_{jm}: the weights of the first step of each interval."""
    del hs
    return jax.tree_util.tree_map(lambda a: a[:, 0], blocks)


def inject_last(blocks: Any, hs: jnp.ndarray) -> Any:
    """d^{ℓ+1}_j = d^ℓ_{jm+m−1}: the last step of each interval (on a reversed index: the first forward one)."""
    del hs
    return jax.tree_util.tree_map(lambda a: a[:, -1], blocks)


def average(blocks: Any, hs: jnp.ndarray) -> Any:
    """θ^{ℓ+1}_j = Σ_k h_{jm+k} θ_{jm+k} / Σ_k h_{jm+k}: the time average (identity steps get weight 0)."""
    total = hs.sum(axis=1)
    weights = hs / jnp.where(total > 0, total, jnp.ones_like(total))[:, None]

    def mean(a: jnp.ndarray) -> jnp.ndarray:
        return jnp.einsum("jk,jk...->j...", weights.astype(a.dtype), a)

    return jax.tree_util.tree_map(mean, blocks)


def flat_levels(data: Any, hs: jnp.ndarray, shapes: tuple[LevelShape, ...],
                restrict: Restriction, front: bool = False) -> tuple[tuple[Any, jnp.ndarray], ...]:
    """Per-step data and step sizes of every level in step order: ((d^ℓ (p_ℓ, …), h^ℓ (p_ℓ,)), …), each level
    padded with identity steps to p_ℓ (after its last step, or with ``front`` before its first); the coarsest
    level unpadded (n, …).

    Args:
        data: pytree of per-step data of the finest level, leading axis n_0.
        hs: step sizes of the finest level, shape (n_0,).
        shapes: from :func:`level_shapes`.
        restrict: how interval data becomes coarse data (:func:`inject_first`, :func:`average`, ...).
        front: pad before the first step (a reversed index whose intervals are anchored at its end).
    """
    levels = []
    for shape in shapes:
        if shape.coarsest:
            levels.append((data, hs))
            break
        data, hs = pad_steps(data, hs, shape.padded, front)
        levels.append((data, hs))
        blocks = jax.tree_util.tree_map(lambda a: a.reshape(shape.n_coarse, shape.m, *a.shape[1:]), data)
        hs_blocks = hs.reshape(shape.n_coarse, shape.m)
        data, hs = restrict(blocks, hs_blocks), hs_blocks.sum(axis=1)
    return tuple(levels)


def interval_layout(shape: LevelShape, data: Any, hs: jnp.ndarray) -> Level:
    """One level's flat data (p, …) in the layout of the module docstring: (m, n_c, …) with intervals, (n, …) on
    the coarsest."""
    if shape.coarsest:
        return Level(data, hs)
    intervals = lambda a: jnp.swapaxes(a.reshape(shape.n_coarse, shape.m, *a.shape[1:]), 0, 1)  # noqa: E731
    return Level(jax.tree_util.tree_map(intervals, data), intervals(hs))


def build_levels(data: Any, hs: jnp.ndarray, shapes: tuple[LevelShape, ...],
                 restrict: Restriction, front: bool = False) -> tuple[Level, ...]:
    """Per-step data and step sizes of every level (:func:`flat_levels`) in the layouts of :func:`interval_layout`."""
    levels = flat_levels(data, hs, shapes, restrict, front)
    return tuple(interval_layout(shape, *level) for shape, level in zip(shapes, levels))
