"""The FAS-MGRIT solve of u_0 = g_0, u_{i+1} − Φ_i(u_i) = 0 (forward propagation, DESIGN §2).

:func:`solve_system` is the one MGRIT implementation; :func:`mgrit_solve` applies it to the layers of a
network and :func:`lpt.mgrit.adjoint.adjoint_solve` to the adjoint system (Günther et al. 2020, §3).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lpt.mgrit.cycle import ChunkTables, Hierarchy, at_rank, cycle, gather_owned, halo, nested_iteration, scatter
from lpt.mgrit.hierarchy import (Grid, average, build_levels, flat_levels, inject_first, interval_layout, join,
                                 pad_states, pad_steps, split)
from lpt.mgrit.layout import Layout, make_layout
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.relax import f_sweep, residual_norm, serial_sweep
from lpt.model import Step
from lpt.parallel.comm import SingleComm, from_chunk

SINGLE = SingleComm()


class MGRITStats(NamedTuple):
    """Convergence record of one solve (fixed shapes, so it can leave ``jit``).

    Attributes:
        residuals: (most_iter,) fine-level residual 2-norms after each cycle, NaN after the last one.
        initial_residual: ‖r_0‖₂ of the F-relaxed initial iterate (NaN for a one-level, i.e. serial, solve).
        iterations: number of cycles done (int32).
        state_norm: ‖u‖₂ of the returned states u_1..u_N (identity padding left out; u_0 = g_0 is data), the
            scale of the relative residual ‖r‖/‖u‖ (NaN for a one-level solve).
    """

    residuals: jnp.ndarray
    initial_residual: jnp.ndarray
    iterations: jnp.ndarray
    state_norm: jnp.ndarray


class _Loop(NamedTuple):
    k: jnp.ndarray  # cycles done
    grid: Grid
    chat: jnp.ndarray
    residual: jnp.ndarray  # ‖r‖₂ of the current iterate
    residuals: jnp.ndarray
    norm: jnp.ndarray  # ‖u‖₂ of the current iterate


def chunk_hierarchy(step: Step, data: Any, hs: jnp.ndarray, options: MGRITOptions, restrict, layout: Layout,
                    comm: Any = SINGLE, front: bool = False) -> Hierarchy:
    """The hierarchy of one layer chunk: its chunked levels (local data, from this chunk's ``layout.n_local``
    fine steps ``data``, ``hs`` in forward order, dead steps at the end) and, gathered from all chunks, the
    remaining coarse levels (``top``). With ``front`` (the adjoint: ``comm`` takes the chunks in reverse order)
    every level of the chunk is reversed but for its dead steps, which stay at its end, and the gathered levels
    are padded before their first step (a reversed index), else after their last."""
    local, counts = layout.local_shapes, layout.counts
    order = (lambda t: tuple(reversed(t))) if front else tuple  # noqa: E731
    levels = flat_levels(data, hs, local, _flipped(restrict) if front else restrict)
    if front:
        levels = tuple(reverse_steps(level, at_rank(comm, order(c.padded))) for level, c in zip(levels, counts))
    tables = ChunkTables(
        sends=tuple(order(tuple(c // s.m for c in cnt.padded)) for s, cnt in zip(layout.shapes[: layout.dist], counts)),
        shifts=tuple(order(tuple(c - r for r, c in zip(cnt.real, cnt.padded)) if front and i else (0,) * len(cnt.real))
                     for i, cnt in enumerate(counts[:-1])),
        owned=order(counts[-1].real), steps=order(counts[0].padded), size=local[-1].n)
    gathered = jax.tree_util.tree_map(partial(gather_owned, comm, tables), levels[-1])  # message: coarse data
    top_shapes = layout.shapes[layout.dist:]
    top = Hierarchy(step, top_shapes, build_levels(*gathered, top_shapes, restrict, front), options,
                    offset=layout.dist, front=front)
    chunked = tuple(interval_layout(shape, *level) for shape, level in zip(local[:-1], levels))
    return Hierarchy(step, local[:-1], chunked, options, comm, top, front=front, tables=tables)


def _flipped(restrict):
    """A restriction of reversed intervals applied to intervals in forward order."""
    return lambda blocks, hs: restrict(jax.tree_util.tree_map(lambda a: a[:, ::-1], blocks), hs[:, ::-1])


def reverse_steps(level: tuple[Any, jnp.ndarray], count: Any) -> tuple[Any, jnp.ndarray]:
    """A level's flat (data, step sizes) with its first ``count`` steps reversed (the rest are dead steps)."""
    size = level[1].shape[0]
    if isinstance(count, int) and count == size:
        return jax.tree_util.tree_map(lambda a: a[::-1], level)
    k = jnp.arange(size)
    index = jnp.where(k < count, count - 1 - k, k)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), level)


def reverse_points(u: jnp.ndarray, count: Any) -> jnp.ndarray:
    """States (size+1, …) with their first ``count`` + 1 points reversed (the chunk's points in the order of
    :func:`reverse_steps`; an involution)."""
    if isinstance(count, int) and count == u.shape[0] - 1:
        return u[::-1]
    k = jnp.arange(u.shape[0])
    return jnp.take(u, jnp.where(k <= count, count - k, k), axis=0)


def map_levels(hier: Hierarchy, fn) -> Hierarchy:
    """Apply ``fn`` to every :class:`Level` of a chunk hierarchy and of its gathered part."""
    top = hier.top._replace(levels=tuple(map(fn, hier.top.levels)))
    return hier._replace(levels=tuple(map(fn, hier.levels)), top=top)


def forward_restriction(options: MGRITOptions):
    """θ^{ℓ+1}_j = θ^ℓ_{jm} (inject) or the step-size weighted interval mean (average)."""
    return average if options.restrict == "average" else inject_first


def state_norm(grid: Grid, real_steps: jnp.ndarray, comm) -> jnp.ndarray:
    """‖u‖₂ over the points u_1..u_N of a grid that a real (not identity-padding) step lands on (``real_steps``:
    the finest level's step sizes > 0, layout (m, n_c)); summed over the chunks and data-parallel ranks."""
    # F-points and C-points apart: stacking them (:func:`landing`) is a copy of all states
    def squares(a: jnp.ndarray, points: int) -> jnp.ndarray:  # ‖·‖² of each point (the first ``points`` axes)
        return jnp.square(a).reshape(*a.shape[:points], -1).sum(axis=-1)

    total = (jnp.sum(jnp.where(real_steps[:-1], squares(grid.f, 2), 0))
             + jnp.sum(jnp.where(real_steps[-1], squares(grid.c[1:], 1), 0)))
    return jnp.sqrt(comm.data_sum(comm.layer_sum(total)))


def solve_system(hier: Hierarchy, g0: jnp.ndarray, u_init: jnp.ndarray | None,
                 target: jnp.ndarray | None = None, min_iter: int = 1) -> tuple[jnp.ndarray, MGRITStats]:
    """MGRIT cycles on u_0 = g_0, u_{i+1} = Φ_i(u_i) until a tolerance or ``max_iter`` cycles.

    Args:
        hier: step, level sizes and data, options.
        g0: initial state u_0.
        u_init: initial iterate (n+1, …); None: nested iteration from the coarsest level (with V-cycles on
            the coarse levels when ``cycle="FMG"``, the full-multigrid start).
        target: a relative tolerance (traced scalar, may change between calls without recompiling): stop
            once ‖r‖₂ ≤ target·‖u‖₂, after at least ``min_iter`` and at most ``max_iter`` cycles (together
            with the options' ``abs_tol``/``rel_tol``, whichever is largest). None: the options decide.

    Returns:
        all states (n+1, …) and the :class:`MGRITStats`.
    """
    opts, comm = hier.options, hier.comm
    hier = hier._replace(g0=g0)
    nan = jnp.full((opts.most_iter if target is None else opts.max_iter,), jnp.nan, g0.dtype)
    if not hier.levels:  # one level: the (gathered) serial sweep is exact
        u = scatter(hier, serial_sweep(hier.step, hier.top.levels[0], g0, None))
        nan0 = jnp.asarray(jnp.nan, g0.dtype)
        return u, MGRITStats(nan.at[0].set(0), nan0, jnp.asarray(1, jnp.int32), nan0)

    fine, m = hier.levels[0], hier.shapes[0].m
    real = fine.hs.sum(axis=0) > 0  # intervals holding a real (not identity-padding) step
    if u_init is None:
        grid, chat = nested_iteration(hier, g0, vcycles=opts.cycle == "FMG")
    else:
        grid, chat = f_sweep(hier.step, fine, halo(hier, 0, jnp.asarray(g0)[None], split(u_init, m).c[1:]), None,
                             opts.interval_batch)
    real_steps = fine.hs > 0
    r0 = residual_norm(chat, grid.c, real, comm)
    kind = "F" if opts.cycle == "F" else "V"
    # XBraid's skip: from the coarse guess, the first cycle's down-sweep (relaxation and restriction of an
    # iterate the nested iteration has just built level by level) is skipped; what remains of that cycle is
    # the nested iteration's up-sweep, so the guess counts as cycle 1.
    skipped = u_init is None and opts.skip_first_down and opts.cycle != "FMG"

    def body(state: _Loop) -> _Loop:
        grid, chat = cycle(hier, 0, state.grid, None, state.chat, kind)
        residual = residual_norm(chat, grid.c, real, comm)
        norm = state_norm(grid, real_steps, comm) if target is not None else state.norm
        return _Loop(state.k + 1, grid, chat, residual, state.residuals.at[state.k].set(residual), norm)

    # the loop carries ‖u‖ only for a target; otherwise it is taken once, after the last cycle
    norm0 = state_norm(grid, real_steps, comm) if target is not None else jnp.zeros((), g0.dtype)
    if skipped:
        state = _Loop(jnp.asarray(1, jnp.int32), grid, chat, r0, nan.at[0].set(r0), norm0)
        r0 = jnp.asarray(jnp.nan, g0.dtype)
    else:
        state = _Loop(jnp.asarray(0, jnp.int32), grid, chat, r0, nan, norm0)
    state = _cycles(body, state, opts, target, min_iter, r0, skipped)
    norm = state.norm if target is not None else state_norm(state.grid, real_steps, comm)
    return join(state.grid), MGRITStats(state.residuals, r0, state.k, norm)


def _cycles(body: Callable[[_Loop], _Loop], state: _Loop, opts: MGRITOptions, target: jnp.ndarray | None,
            min_iter: int, r0: jnp.ndarray, skipped: bool) -> _Loop:
    """The cycles of :func:`solve_system` from its first ``state`` (``body``: one cycle). With a tolerance (the
    options' ``abs_tol``/``rel_tol``, or ``target``·‖u‖₂) while the residual is above it or fewer than
    ``min_iter`` cycles are done, at most ``max_iter``; without one ``max_iter`` cycles (the coarse guess counts
    as one when ``skipped``), then growth cycles while ‖r‖₂ > ``r0``, at most ``most_iter`` in all."""
    if opts.has_tolerance or target is not None:
        # state.residuals has g0's dtype (the NaN record solve_system fills)
        tol = jnp.maximum(jnp.asarray(opts.abs_tol, state.residuals.dtype), opts.rel_tol * state.residual)

        def more(s: _Loop) -> jnp.ndarray:
            bound = tol if target is None else jnp.maximum(tol, target.astype(tol.dtype) * s.norm)
            return (s.k < opts.max_iter) & ((s.residual > bound) | (s.k < min_iter))

        return jax.lax.while_loop(more, body, state)
    if not opts.growth_iter:
        return jax.lax.fori_loop(0, opts.max_iter - int(skipped), lambda _, s: body(s), state)

    # growth cycles: the residual ended above its start, more cycles, at most growth_iter (r0 is NaN after a
    # skipped down-cycle: then no more). One loop for both kinds of cycle, so the cycle is compiled once.
    def more(s: _Loop) -> jnp.ndarray:
        return (s.k < opts.max_iter) | ((s.k < opts.most_iter) & (s.residual > r0))

    return jax.lax.while_loop(more, body, state)


def forward_hierarchy(step: Step, theta: Any, hs: jnp.ndarray, options: MGRITOptions, layout: Layout,
                      comm: Any = SINGLE) -> Hierarchy:
    """The forward system's chunk hierarchy for this chunk's weights ``theta`` and step sizes ``hs``."""
    return chunk_hierarchy(step, theta, hs, options, forward_restriction(options), layout, comm)


def warm_or_guess(hier: Hierarchy, g0: jnp.ndarray, warm: jnp.ndarray | None, valid: jnp.ndarray | None,
                  to_forward: Callable[[jnp.ndarray], jnp.ndarray] | None = None) -> jnp.ndarray | None:
    """The initial iterate of a one-shot solve: ``warm`` (a previous step's states) where ``valid`` is true, else
    the cheap coarse-level guess (in ``warm``'s dtype: line searches may try parameters of a promoted dtype);
    ``warm`` alone, or None (the solver's nested iteration), when ``valid`` or ``warm`` is None. ``to_forward``:
    ``warm`` is in forward order and ``hier`` a reversed (adjoint) index, and this maps the guess to it."""
    if warm is None or valid is None:
        return warm
    order = to_forward or (lambda u: u)
    cheap = lambda: order(initial_guess(hier, g0)).astype(warm.dtype)  # noqa: E731
    return jax.lax.cond(valid, lambda: warm, cheap)


def forward_chunk(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray, options: MGRITOptions, layout: Layout,
                  comm: Any = SINGLE, u_init: jnp.ndarray | None = None, valid: jnp.ndarray | None = None,
                  target: jnp.ndarray | None = None, min_iter: int = 1) -> tuple[jnp.ndarray, jnp.ndarray, MGRITStats]:
    """This chunk's states y (n_local+1, …, the right end a halo), y_N (on every chunk) and the stats of the
    forward FAS-MGRIT solve of one layer chunk (``theta``, ``hs``: its n_local steps), from ``u_init`` (a warm
    start, see :func:`warm_or_guess`) or the nested iteration; ``target``, ``min_iter`` as in
    :func:`solve_system`. The one forward solve of the training solver and of :func:`lpt.layer_parallel`."""
    hier = forward_hierarchy(step, theta, hs, options, layout, comm)
    ys, stats = solve_system(hier, y0, warm_or_guess(hier, y0, u_init, valid), target, min_iter)
    return ys, final_state(ys, layout, comm), stats


def final_state(ys: jnp.ndarray, layout: Layout, comm: Any) -> jnp.ndarray:
    """y_N on every chunk from this chunk's states with halo ``ys`` (n_local+1, …): the state after the last real
    layer, taken from the last chunk. The identity steps after it carry y_N unchanged only within its
    interval (or once converged), and how many there are depends on the processor grid."""
    return from_chunk(comm, layout.chunks - 1, ys[layout.last_real])


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


def _ratios(stats: MGRITStats) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per-cycle ratios ‖r_k‖/‖r_{k−1}‖, k = 1..max_iter (k = 0 is the initial iterate), with their k and
    whether they are usable (both norms finite, the denominator positive, cycle k done)."""
    seq = jnp.concatenate([stats.initial_residual[None], stats.residuals])
    num, den = seq[1:], seq[:-1]
    k = jnp.arange(1, seq.shape[0])
    ok = jnp.isfinite(num) & jnp.isfinite(den) & (den > 0) & (num > 0) & (k <= stats.iterations)
    return jnp.where(ok, num / jnp.where(ok, den, 1), 1), k, ok


def convergence_factor(stats: MGRITStats, first: int = 2, last: int | None = None) -> jnp.ndarray:
    """Geometric mean of the ratios ‖r_k‖/‖r_{k−1}‖ over the cycles k = first..last done (k = 0 is the initial
    iterate): (‖r_last‖/‖r_{first−1}‖)^{1/(last−first+1)}, as the MGRIT literature reports it. The default
    ``first=2`` leaves out cycle 1, whose ratio compares with an F-relaxed initial iterate (a coarse guess
    or a warm start) and says little about the cycle's contraction. NaN if no ratio is usable (e.g. one
    cycle); ratios with a zero, NaN or infinite norm are left out."""
    ratio, k, ok = _ratios(stats)
    ok = ok & (k >= first) & (k <= (k[-1] if last is None else last))
    count = jnp.sum(ok)
    return jnp.where(count > 0, jnp.exp(jnp.sum(jnp.where(ok, jnp.log(ratio), 0)) / jnp.maximum(count, 1)), jnp.nan)


def last_factor(stats: MGRITStats) -> jnp.ndarray:
    """The last cycle's ratio ‖r_K‖/‖r_{K−1}‖ (K = cycles done ≥ 2; XBraid's per-iteration figure), else NaN."""
    ratio, k, ok = _ratios(stats)
    pick = ok & (k == stats.iterations) & (k >= 2)
    return jnp.where(jnp.any(pick), jnp.sum(jnp.where(pick, ratio, 0)), jnp.nan)
