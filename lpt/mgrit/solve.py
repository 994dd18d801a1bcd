"""The FAS-MGRIT solve of u_0 = g_0, u_{i+1} − Φ_i(u_i) = 0 (forward propagation, DESIGN §2).

:func:`solve_system` is the one MGRIT implementation; :func:`mgrit_solve` applies it to the layers of a
network and :func:`lpt.mgrit.adjoint.adjoint_solve` to the adjoint system (Günther et al. 2020, §3).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lpt.mgrit.cycle import Hierarchy, cycle, halo, nested_iteration, scatter
from lpt.mgrit.hierarchy import Grid, average, build_levels, inject_first, join, pad_states, pad_steps, split
from lpt.mgrit.layout import Layout, make_layout
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.relax import f_sweep, residual_norm, serial_sweep
from lpt.model import Step
from lpt.parallel.comm import SingleComm

SINGLE = SingleComm()


class MGRITStats(NamedTuple):
    """Convergence record of one solve (fixed shapes, so it can leave ``jit``).

    Attributes:
        residuals: (max_iter,) fine-level residual 2-norms after each cycle, NaN after the last one.
        initial_residual: ‖r_0‖₂ of the F-relaxed initial iterate (NaN for a one-level, i.e. serial, solve).
        iterations: number of cycles done (int32).
    """

    residuals: jnp.ndarray
    initial_residual: jnp.ndarray
    iterations: jnp.ndarray


class _Loop(NamedTuple):
    k: jnp.ndarray  # cycles done
    grid: Grid
    chat: jnp.ndarray
    residual: jnp.ndarray  # ‖r‖₂ of the current iterate
    residuals: jnp.ndarray


def chunk_hierarchy(step: Step, data: Any, hs: jnp.ndarray, options: MGRITOptions, restrict, layout: Layout,
                    comm: Any = SINGLE) -> Hierarchy:
    """The hierarchy of one layer chunk: its chunked levels (local data, from this chunk's ``layout.n_local``
    fine steps ``data``, ``hs``) and, gathered from all chunks, the remaining coarse levels (``top``)."""
    local = layout.local_shapes
    levels = build_levels(data, hs, local, restrict)
    gathered = jax.tree_util.tree_map(comm.layer_gather, levels[-1])  # message: the restricted coarse data
    top_shapes = layout.shapes[layout.dist:]
    top = Hierarchy(step, top_shapes, build_levels(gathered.data, gathered.hs, top_shapes, restrict), options,
                    offset=layout.dist)
    return Hierarchy(step, local[:-1], levels[:-1], options, comm, top)


def map_levels(hier: Hierarchy, fn) -> Hierarchy:
    """Apply ``fn`` to every :class:`Level` of a chunk hierarchy and of its gathered part."""
    top = hier.top._replace(levels=tuple(map(fn, hier.top.levels)))
    return hier._replace(levels=tuple(map(fn, hier.levels)), top=top)


def forward_restriction(options: MGRITOptions):
    """θ^{ℓ+1}_j = θ^ℓ_{jm} (inject) or the step-size weighted interval mean (average)."""
    return average if options.restrict == "average" else inject_first


def solve_system(hier: Hierarchy, g0: jnp.ndarray, u_init: jnp.ndarray | None) -> tuple[jnp.ndarray, MGRITStats]:
    """MGRIT cycles on u_0 = g_0, u_{i+1} = Φ_i(u_i) until a tolerance or ``max_iter`` cycles.

    Args:
        hier: step, level sizes and data, options.
        g0: initial state u_0.
        u_init: initial iterate (n+1, …); None: nested iteration from the coarsest level (with V-cycles on
            the coarse levels when ``cycle="FMG"``, the full-multigrid start).

    Returns:
        all states (n+1, …) and the :class:`MGRITStats`.
    """
    opts, comm = hier.options, hier.comm
    hier = hier._replace(g0=g0)
    nan = jnp.full((opts.max_iter,), jnp.nan, g0.dtype)
    if not hier.levels:  # one level: the (gathered) serial sweep is exact
        u = scatter(hier, serial_sweep(hier.step, hier.top.levels[0], g0, None))
        return u, MGRITStats(nan.at[0].set(0), jnp.asarray(jnp.nan, g0.dtype), jnp.asarray(1, jnp.int32))

    fine, m = hier.levels[0], hier.shapes[0].m
    real = fine.hs.sum(axis=0) > 0  # intervals holding a real (not identity-padding) step
    if u_init is None:
        grid, chat = nested_iteration(hier, g0, vcycles=opts.cycle == "FMG")
    else:
        grid, chat = f_sweep(hier.step, fine, halo(hier, jnp.asarray(g0)[None], split(u_init, m).c[1:]), None,
                             opts.interval_batch)
    r0 = residual_norm(chat, grid.c, real, comm)
    kind = "F" if opts.cycle == "F" else "V"
    # XBraid's skip: from the coarse guess, the first cycle's down-sweep (relaxation and restriction of an
    # iterate the nested iteration has just built level by level) is skipped; what remains of that cycle is
    # the nested iteration's up-sweep, so the guess counts as cycle 1.
    skipped = u_init is None and opts.skip_first_down and opts.cycle != "FMG"

    def body(state: _Loop) -> _Loop:
        grid, chat = cycle(hier, 0, state.grid, None, state.chat, kind)
        residual = residual_norm(chat, grid.c, real, comm)
        return _Loop(state.k + 1, grid, chat, residual, state.residuals.at[state.k].set(residual))

    if skipped:
        state = _Loop(jnp.asarray(1, jnp.int32), grid, chat, r0, nan.at[0].set(r0))
        r0 = jnp.asarray(jnp.nan, g0.dtype)
    else:
        state = _Loop(jnp.asarray(0, jnp.int32), grid, chat, r0, nan)
    if opts.has_tolerance:
        tol = jnp.maximum(jnp.asarray(opts.abs_tol, g0.dtype), opts.rel_tol * state.residual)
        state = jax.lax.while_loop(lambda s: (s.k < opts.max_iter) & (s.residual > tol), body, state)
    else:
        state = jax.lax.fori_loop(0, opts.max_iter - int(skipped), lambda _, s: body(s), state)
    return join(state.grid), MGRITStats(state.residuals, r0, state.k)


def forward_hierarchy(step: Step, theta: Any, hs: jnp.ndarray, options: MGRITOptions, layout: Layout,
                      comm: Any = SINGLE) -> Hierarchy:
    """The forward system's chunk hierarchy for this chunk's weights ``theta`` and step sizes ``hs``."""
    return chunk_hierarchy(step, theta, hs, options, forward_restriction(options), layout, comm)


def padded(theta: Any, hs: jnp.ndarray, layout: Layout) -> tuple[Any, jnp.ndarray]:
    """Weights and step sizes with identity steps appended up to ``layout.n_pad``."""
    return pad_steps(theta, hs, layout.n_pad)


@partial(jax.jit, static_argnames=("step", "options"))
def mgrit_solve(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray, options: MGRITOptions,
                u_init: jnp.ndarray | None = None) -> tuple[jnp.ndarray, MGRITStats]:
    """Forward propagation y_{n+1} = Φ_n(y_n) = step(θ_n, y_n, h_n) by FAS-MGRIT (Falgout et al. 2014).

    Args:
        step: the layer step (static: hashable, e.g. ``model.step``).
        theta: stacked layer parameters, leading axis N.
        hs: step sizes (N,).
        y0: initial state.
        options: solver settings (static).
        u_init: initial iterate (N+1, …); default: :func:`coarse_initial_guess` (or FMG's nested iteration).

    Returns:
        states y_0..y_N (N+1, …) and :class:`MGRITStats`. With ``max_levels=1`` this is
        :func:`lpt.model.propagate_states`, bit for bit.
    """
    n = hs.shape[0]
    layout = make_layout(n, options)
    hier = forward_hierarchy(step, *padded(theta, hs, layout), options, layout)
    u, stats = solve_system(hier, y0, None if u_init is None else pad_states(u_init, layout.n_pad + 1))
    return u[: n + 1], stats


def initial_guess(hier: Hierarchy, g0: jnp.ndarray) -> jnp.ndarray:
    """Serial sweep on the coarsest level, injected and F-relaxed level by level to the finest: this chunk's
    states with halo (n_local+1, …)."""
    hier = hier._replace(g0=g0)
    if not hier.levels:
        return scatter(hier, serial_sweep(hier.step, hier.top.levels[0], g0, None))
    grid, _ = nested_iteration(hier, g0, vcycles=False)
    return join(grid)


@partial(jax.jit, static_argnames=("step", "options"))
def coarse_initial_guess(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray,
                         options: MGRITOptions) -> jnp.ndarray:
    """The cheap initial iterate (N+1, …): coarsest-level serial sweep, interpolated (injection at the
    C-points, F-relaxation) to the fine grid. Work ≈ N steps, all in parallel but the coarsest sweep."""
    n = hs.shape[0]
    layout = make_layout(n, options)
    return initial_guess(forward_hierarchy(step, *padded(theta, hs, layout), options, layout), y0)[: n + 1]


def convergence_factor(stats: MGRITStats, first: int = 1, last: int | None = None) -> jnp.ndarray:
    """Mean ratio ‖r_k‖/‖r_{k−1}‖ over cycles k = first..last (k = 0 is the initial iterate); NaN if none.

    Ratios with a zero, NaN or infinite denominator or numerator are left out.
    """
    seq = jnp.concatenate([stats.initial_residual[None], stats.residuals])
    last = seq.shape[0] - 1 if last is None else min(last, seq.shape[0] - 1)
    num, den = seq[first : last + 1], seq[first - 1 : last]
    ok = jnp.isfinite(num) & jnp.isfinite(den) & (den > 0)
    count = jnp.sum(ok)
    total = jnp.sum(jnp.where(ok, num / jnp.where(ok, den, 1), 0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
