"""FAS-MGRIT cycles (V, F) and nested iteration, by recursion over the static levels at trace time.

One cycle on level ℓ (Falgout et al. 2014, Alg. 2; Günther et al. 2020, §3):

1. relax: F-relaxation, then ``nrelax`` times (C-relaxation u_{jm} ← Φ(u_{jm−1}) + g_{jm}, F-relaxation);
2. residual at the C-points r_j = g_{jm} − (u_{jm} − Φ(u_{jm−1})) = ĉ_j − u_{jm};
3. FAS right-hand side g^c_0 = u_0, g^c_j = r_j + (v_j − Φ^c_{j−1}(v_{j−1})), v_j = u_{jm};
4. coarse solve: serial sweep on the coarsest level, else one V-cycle (V) or an F-cycle followed by a
   V-cycle (F) on level ℓ+1;
5. correction u_{jm} ← v^new_j and F-relaxation.

Every cycle ends F-relaxed, with the C-point predictions ĉ at hand: they give the residual for the stopping
test and make the first F-relaxation of the next cycle redundant, so a cycle that receives ĉ skips it.

Chunks (DESIGN §4). The levels of a :class:`Hierarchy` hold one layer chunk's intervals; the C-point array
c (n_c+1, …) of a chunk starts with a *halo*, the last C-point of the previous chunk, refreshed by
``comm.shift`` after each C-relaxation — the only message of a relaxation. Below the chunked levels, the
``top`` hierarchy (global, one chunk) is gathered and solved redundantly by every chunk. On one device the
communication is the identity and this is plain MGRIT. Chunks with fewer steps than the static size of their
arrays hold dead identity steps at their local end (:mod:`lpt.mgrit.layout`): the :class:`ChunkTables` say which
C-point a chunk sends, where its coarse levels start (the adjoint's front padding), and which points it gathers.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lpt.mgrit.hierarchy import Grid, Level, LevelShape, join, pad_states, pad_zeros, real_states, split
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.relax import Step, f_sweep, fas_rhs, fas_rhs_serial, serial_sweep
from lpt.parallel.comm import SingleComm

CycleKind = Literal["V", "F"]


class ChunkTables(NamedTuple):
    """Static per-chunk tables of a chunk hierarchy, each in the order of its ``comm``'s ranks.

    Attributes:
        sends: per chunked level, the C-point index of each chunk's last real point (its halo to the next chunk).
        shifts: per chunked level, the identity steps before each chunk's first step (the padding of the last
            chunk on the adjoint's reversed index; 0 in the forward solve and on level 0).
        owned: the real points of each chunk on the gathered level.
        steps: each chunk's fine steps (real and padding: the rest of its arrays are dead steps).
        size: the chunk-local size of the gathered level.
    """

    sends: tuple[tuple[int, ...], ...]
    shifts: tuple[tuple[int, ...], ...]
    owned: tuple[int, ...]
    steps: tuple[int, ...]
    size: int


def at_rank(comm: Any, table: tuple[int, ...]) -> Any:
    """This chunk's entry of a per-chunk table: a Python int when all are equal, else indexed by the rank."""
    return table[0] if len(set(table)) == 1 else jnp.asarray(table)[comm.layer_rank()]


class Hierarchy(NamedTuple):
    """Everything a cycle needs: the step, static level sizes, per-level data and the options.

    Attributes:
        shapes, levels: the chunk's levels with intervals (local sizes), or — with ``top=None`` — all
            levels of a problem held whole, the coarsest last.
        comm: communication along the layer chunks.
        top: the gathered remainder (a global ``Hierarchy`` with ``top=None``), or None.
        g0: u_0, known to every chunk (the first point of every level).
        offset: index of this hierarchy's first level in the whole hierarchy (for per-level options).
        front: coarse levels are padded before their first step (the adjoint's reversed index), not after
            their last (:attr:`LevelShape.padded`, :func:`lpt.mgrit.hierarchy.pad_states`).
    """

    step: Step
    shapes: tuple[LevelShape, ...]
    levels: tuple[Level, ...]
    options: MGRITOptions
    comm: Any = SingleComm()
    top: Any = None
    g0: Any = None
    offset: int = 0
    front: bool = False
    tables: ChunkTables | None = None


def halo(hier: Hierarchy, lvl: int, c: jnp.ndarray, new: jnp.ndarray) -> jnp.ndarray:
    """C-points (n_c+1, …) of level ``lvl`` with the owned points ``new`` (n_c, …) and the halo: the previous
    chunk's last real C-point."""
    last = new[-1] if hier.tables is None else _index(new, at_rank(hier.comm, hier.tables.sends[lvl]) - 1)
    # message: one state (…) from each chunk to the next
    return jnp.concatenate([hier.comm.shift(last, c[0])[None], new], axis=0)


def _index(a: jnp.ndarray, i: Any) -> jnp.ndarray:
    return a[i] if isinstance(i, int) else jax.lax.dynamic_index_in_dim(a, i, keepdims=False)


def to_level(hier: Hierarchy, lvl: int, v: jnp.ndarray, zeros: bool = False) -> jnp.ndarray:
    """The C-points ``v`` of level ``lvl`` − 1 as the points of level ``lvl`` (shapes[lvl].padded + 1, …),
    extended by the level's identity padding: the constant states, or with ``zeros`` zero residuals."""
    shape = hier.shapes[lvl]
    shift = 0 if hier.tables is None else at_rank(hier.comm, hier.tables.shifts[lvl])
    if isinstance(shift, int) and shift == 0:
        return (pad_zeros if zeros else pad_states)(v, shape.padded + 1, hier.front and hier.tables is None)
    k = jnp.arange(shape.padded + 1) - shift
    out = jnp.take(v, jnp.clip(k, 0, v.shape[0] - 1), axis=0)
    if not zeros:
        return out
    inside = ((k >= 0) & (k < v.shape[0])).reshape(-1, *(1,) * (v.ndim - 1))
    return jnp.where(inside, out, jnp.zeros_like(out))


def from_level(hier: Hierarchy, lvl: int, u: jnp.ndarray, length: int) -> jnp.ndarray:
    """The ``length`` C-points of level ``lvl`` − 1 from the points ``u`` of level ``lvl`` (inverse of
    :func:`to_level`)."""
    shift = 0 if hier.tables is None else at_rank(hier.comm, hier.tables.shifts[lvl])
    if isinstance(shift, int) and shift == 0:
        return real_states(u, length, hier.front and hier.tables is None)
    return jnp.take(u, jnp.clip(jnp.arange(length) + shift, 0, u.shape[0] - 1), axis=0)


def relax(hier: Hierarchy, lvl: int, grid: Grid, g: jnp.ndarray | None,
          chat: jnp.ndarray | None) -> tuple[Grid, jnp.ndarray]:
    """F(CF)^ν relaxation on level ``lvl``; ``chat`` given means ``grid`` is already F-relaxed."""
    level, batch = hier.levels[lvl], hier.options.interval_batch
    if chat is None:
        grid, chat = f_sweep(hier.step, level, grid.c, g, batch)
    for _ in range(hier.options.nrelax_at(lvl + hier.offset)):
        grid, chat = f_sweep(hier.step, level, halo(hier, lvl, grid.c, chat), g, batch)  # C-relaxation, F-relaxation
    return grid, chat


def cycle(hier: Hierarchy, lvl: int, grid: Grid, g: jnp.ndarray | None, chat: jnp.ndarray | None,
          kind: CycleKind) -> tuple[Grid, jnp.ndarray]:
    """One V- or F-cycle on level ``lvl`` (not the coarsest); returns the F-relaxed iterate and ĉ."""
    grid, chat = relax(hier, lvl, grid, g, chat)
    v_new = coarse_solve(hier, lvl + 1, grid.c, chat - grid.c[1:], kind)
    return f_sweep(hier.step, hier.levels[lvl], v_new, g, hier.options.interval_batch)


def coarse_solve(hier: Hierarchy, lvl: int, v: jnp.ndarray, r: jnp.ndarray, kind: CycleKind) -> jnp.ndarray:
    """Solve the FAS coarse equation on level ``lvl`` for the restricted iterate ``v`` (n+1, …) and
    residual ``r`` (n, …) (steps 3–4 of a cycle); returns v^new (n+1, …)."""
    if hier.top is not None and lvl == len(hier.levels):
        return gathered_solve(hier, v, r, kind)
    shape, level, batch = hier.shapes[lvl], hier.levels[lvl], hier.options.interval_batch
    r = jnp.concatenate([jnp.zeros_like(v[:1]), r], axis=0)
    if shape.coarsest:
        return serial_sweep(hier.step, level, v[0], fas_rhs_serial(hier.step, level, v, r, batch))
    # identity steps padding the level: exact constant states, zero residual there
    grid = split(to_level(hier, lvl, v), shape.m)
    g = fas_rhs(hier.step, level, grid, split(to_level(hier, lvl, r, zeros=True), shape.m), batch)
    chat = None
    if kind == "F":
        grid, chat = cycle(hier, lvl, grid, g, None, "F")
    grid, _ = cycle(hier, lvl, grid, g, chat, "V")
    return from_level(hier, lvl, join(grid), v.shape[0])


def gather_owned(comm: Any, tables: ChunkTables | None, x: jnp.ndarray) -> jnp.ndarray:
    """The chunks' arrays (size, …) of the gathered level concatenated, each cut to its real points."""
    g = comm.layer_gather(x)  # message: the chunks' arrays, then the real points taken out of them
    if tables is None or sum(tables.owned) == g.shape[0]:
        return g
    index = np.concatenate([q * x.shape[0] + np.arange(c) for q, c in enumerate(tables.owned)])
    return jnp.take(g, index, axis=0)


def gather(hier: Hierarchy, owned: jnp.ndarray) -> jnp.ndarray:
    """Global states (n+1, …) from every chunk's owned points (size, …) and u_0."""
    return jnp.concatenate([hier.g0[None], gather_owned(hier.comm, hier.tables, owned)], axis=0)


def scatter(hier: Hierarchy, u: jnp.ndarray) -> jnp.ndarray:
    """This chunk's states with halo (size+1, …) from global states (n+1, …); its dead points past the real
    ones hold any (finite) states."""
    tables = hier.tables
    offsets = tuple(int(o) for o in np.cumsum((0, *tables.owned[:-1])))
    u = pad_states(u, max(offsets[-1] + tables.size + 1, u.shape[0]))
    start = at_rank(hier.comm, offsets)
    return jax.lax.dynamic_slice_in_dim(u, start, tables.size + 1)


def gathered_solve(hier: Hierarchy, v: jnp.ndarray, r: jnp.ndarray, kind: CycleKind) -> jnp.ndarray:
    """The coarse solve on the gathered level: every chunk solves the whole level redundantly."""
    # messages: all-gather of the level's C-point states and residuals (n_local, …) per chunk
    v_all = gather(hier, v[1:])
    r_all = gather_owned(hier.comm, hier.tables, r)
    return scatter(hier, coarse_solve(hier.top, 0, v_all, r_all, kind))


def top_states(top: Hierarchy, g0: jnp.ndarray, vcycles: bool) -> jnp.ndarray:
    """Nested-iteration states of the finest level of a whole (``top=None``) hierarchy, V-cycled if asked."""
    if len(top.shapes) == 1:
        return serial_sweep(top.step, top.levels[0], g0, None)
    grid, chat = nested_iteration(top, g0, vcycles)
    if vcycles:
        grid, _ = cycle(top, 0, grid, None, chat, "V")
    return real_states(join(grid), top.shapes[0].n + 1, top.front)


def nested_iteration(hier: Hierarchy, g0: jnp.ndarray, vcycles: bool) -> tuple[Grid, jnp.ndarray]:
    """Initial iterate of the finest level (which must have intervals) from the coarsest one.

    Each level ℓ with the homogeneous right-hand side g = (g_0, 0, …, 0) and its own weights: serial sweep
    on the coarsest level; then, level by level towards the finest, injection to the C-points, F-relaxation
    and — with ``vcycles`` (full multigrid, FMG) — one V-cycle on every level but the finest.

    Returns:
        the F-relaxed finest-level iterate and its C-point predictions ĉ.
    """
    if hier.top is None:
        u, below = serial_sweep(hier.step, hier.levels[-1], g0, None), len(hier.shapes) - 1
    else:
        u, below = scatter(hier, top_states(hier.top, g0, vcycles)), len(hier.levels)
    for lvl in reversed(range(below)):
        grid, chat = f_sweep(hier.step, hier.levels[lvl], u, None, hier.options.interval_batch)
        if lvl == 0:
            return grid, chat
        if vcycles:
            grid, chat = cycle(hier, lvl, grid, None, chat, "V")
        u = from_level(hier, lvl, join(grid), hier.shapes[lvl - 1].n_coarse + 1)
    raise ValueError("nested_iteration needs at least two levels")
