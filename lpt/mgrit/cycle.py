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
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp

from lpt.mgrit.hierarchy import Grid, Level, LevelShape, join, pad_states, pad_zeros, split
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.relax import f_sweep, fas_rhs, fas_rhs_serial, serial_sweep
from lpt.model import Step

CycleKind = Literal["V", "F"]


class Hierarchy(NamedTuple):
    """Everything a cycle needs: the step, static level sizes, per-level data and the options."""

    step: Step
    shapes: tuple[LevelShape, ...]
    levels: tuple[Level, ...]
    options: MGRITOptions


def relax(hier: Hierarchy, lvl: int, grid: Grid, g: jnp.ndarray | None,
          chat: jnp.ndarray | None) -> tuple[Grid, jnp.ndarray]:
    """F(CF)^ν relaxation on level ``lvl``; ``chat`` given means ``grid`` is already F-relaxed."""
    level = hier.levels[lvl]
    if chat is None:
        grid, chat = f_sweep(hier.step, level, grid.c, g)
    for _ in range(hier.options.nrelax_at(lvl)):
        c = jnp.concatenate([grid.c[:1], chat], axis=0)  # C-relaxation
        grid, chat = f_sweep(hier.step, level, c, g)
    return grid, chat


def cycle(hier: Hierarchy, lvl: int, grid: Grid, g: jnp.ndarray | None, chat: jnp.ndarray | None,
          kind: CycleKind) -> tuple[Grid, jnp.ndarray]:
    """One V- or F-cycle on level ``lvl`` (not the coarsest); returns the F-relaxed iterate and ĉ."""
    grid, chat = relax(hier, lvl, grid, g, chat)
    v_new = coarse_solve(hier, lvl + 1, grid.c, chat - grid.c[1:], kind)
    return f_sweep(hier.step, hier.levels[lvl], v_new, g)


def coarse_solve(hier: Hierarchy, lvl: int, v: jnp.ndarray, r: jnp.ndarray, kind: CycleKind) -> jnp.ndarray:
    """Solve the FAS coarse equation on level ``lvl`` for the restricted iterate ``v`` (n+1, …) and
    residual ``r`` (n, …) (steps 3–4 of a cycle); returns v^new (n+1, …)."""
    shape, level = hier.shapes[lvl], hier.levels[lvl]
    r = jnp.concatenate([jnp.zeros_like(v[:1]), r], axis=0)
    if shape.coarsest:
        return serial_sweep(hier.step, level, v[0], fas_rhs_serial(hier.step, level, v, r))
    grid = split(pad_states(v, shape.padded + 1), shape.m)
    g = fas_rhs(hier.step, level, grid, split(pad_zeros(r, shape.padded + 1), shape.m))
    chat = None
    if kind == "F":
        grid, chat = cycle(hier, lvl, grid, g, None, "F")
    grid, _ = cycle(hier, lvl, grid, g, chat, "V")
    return join(grid)[: shape.n + 1]


def nested_iteration(hier: Hierarchy, g0: jnp.ndarray, vcycles: bool) -> tuple[Grid, jnp.ndarray]:
    """Initial iterate of the finest level (which must have intervals) from the coarsest one.

    Each level ℓ with the homogeneous right-hand side g = (g_0, 0, …, 0) and its own weights: serial sweep
    on the coarsest level; then, level by level towards the finest, injection to the C-points, F-relaxation
    and — with ``vcycles`` (full multigrid, FMG) — one V-cycle on every level but the finest.

    Returns:
        the F-relaxed finest-level iterate and its C-point predictions ĉ.
    """
    u = serial_sweep(hier.step, hier.levels[-1], g0, None)
    for lvl in reversed(range(len(hier.shapes) - 1)):
        grid, chat = f_sweep(hier.step, hier.levels[lvl], u[: hier.shapes[lvl].n_coarse + 1], None)
        if lvl == 0:
            return grid, chat
        if vcycles:
            grid, chat = cycle(hier, lvl, grid, None, chat, "V")
        u = join(grid)
    raise ValueError("nested_iteration needs at least two levels")
