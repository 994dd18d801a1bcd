"""Backpropagation as an MGRIT solve (DESIGN §3; Günther et al. 2020, §3.2) and the layer gradient.

The adjoint system ȳ_N = ∂loss/∂y_N, ȳ_n = (∂Φ_n/∂y(y_n))ᵀ ȳ_{n+1} is, on the reversed index
w_k = ȳ_{N−k}, a system of the same kind, w_{k+1} = Ψ_k(w_k), whose step is the vector–Jacobian product of
Φ_{N−1−k} at the primal state y_{N−1−k}. It is solved by the very same
:func:`lpt.mgrit.solve.solve_system`; the per-step data (θ_n, y_n) are restricted like the forward weights
and then every step of every level is linearised once, all at once (``jax.vjp`` vmapped over the steps).

Coarse adjoint steps are the VJPs of the forward coarse steps at the injected primal states, Ψ^c_j(w) =
(∂Φ^c/∂y(y_{left}))ᵀ w with y_{left} the forward-left end of the interval: on the reversed index that is the
*last* step of an interval, so the adjoint coarse operator is the transpose of a forward coarse propagator
and converges like the forward solve (identical to the forward solve's when N is a multiple of the
coarsening factors; on uneven depths the identity steps sit at the other end).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lpt.mgrit.batching import over_intervals, over_steps
from lpt.mgrit.cycle import Hierarchy, at_rank
from lpt.mgrit.hierarchy import Level, average, inject_last, pad_states
from lpt.mgrit.layout import Layout, make_layout
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.solve import (SINGLE, MGRITStats, chunk_hierarchy, initial_guess, map_levels, mgrit_solve, padded,
                             reverse_points, solve_system, warm_or_guess)
from lpt.model import Step
from lpt.parallel.comm import ReversedComm, from_chunk


def linearize(step: Step, theta_n: Any, y_n: jnp.ndarray, h: jnp.ndarray) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The VJP w ↦ (∂Φ_n/∂y (y_n))ᵀ w of Φ_n(y) = step(θ_n, y, h_n) at the primal state, as a pytree
    (``jax.tree_util.Partial`` holding the linearisation), so it can be built for all steps at once."""
    return jax.vjp(lambda y: step(theta_n, y, h), y_n)[1]


def apply_vjp(vjp: Callable[[jnp.ndarray], jnp.ndarray], w: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
    """The adjoint step Ψ(w) = (∂Φ_n/∂y (y_n))ᵀ w, per-step data = the linearisation of Φ_n."""
    del h  # already inside the linearisation
    return vjp(w)[0]


def adjoint_restriction(options: MGRITOptions):
    """Coarse adjoint data on the reversed index: weights as the forward restriction (injection takes the
    last step of the reversed interval = the first forward one), primal states at the forward-left end."""
    restrict_theta = average if options.restrict == "average" else inject_last

    def restrict(blocks: tuple[Any, jnp.ndarray], hs: jnp.ndarray) -> tuple[Any, jnp.ndarray]:
        theta, ys = blocks
        return restrict_theta(theta, hs), inject_last(ys, hs)

    return restrict


def adjoint_hierarchy(step: Step, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, options: MGRITOptions,
                      layout: Layout, comm: Any = SINGLE) -> Hierarchy:
    """Levels of the adjoint system on the reversed index, for one layer chunk (``theta``, ``hs`` its
    n_local steps, ``ys`` its primal states with halo (n_local+1, …)); the chunks are taken in reverse
    order, and each chunk's steps but its dead ones (:func:`~lpt.mgrit.solve.chunk_hierarchy`). Per-step data
    (θ_{N−1−k}, y_{N−1−k}) are restricted, then every step of every level is linearised once (all at once), so that
    an adjoint step in the cycles costs one transposed Jacobian product and no recomputation of Φ."""
    hier = chunk_hierarchy(apply_vjp, (theta, ys[:-1]), hs, options, adjoint_restriction(options), layout,
                           ReversedComm(comm), front=True)
    return map_levels(hier, partial(_linearize_level, step, options.interval_batch))


def adjoint_chunk(step: Step, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, ybar_final: jnp.ndarray,
                  options: MGRITOptions, layout: Layout, comm: Any = SINGLE, w_init: jnp.ndarray | None = None,
                  valid: jnp.ndarray | None = None, target: jnp.ndarray | None = None,
                  min_iter: int = 1) -> tuple[jnp.ndarray, MGRITStats]:
    """This chunk's adjoint states ȳ (n_local+1, …, forward order, the right end a halo) by MGRIT, from
    ``w_init`` (a warm start; used where ``valid`` is true when given, else the cheap coarse guess:
    :func:`~lpt.mgrit.solve.warm_or_guess`) or, without it, the nested iteration; ``target``, ``min_iter`` as in
    :func:`solve_system`."""
    hier = adjoint_hierarchy(step, theta, hs, ys, options, layout, comm)
    flip = partial(reverse_points, count=at_rank(hier.comm, hier.tables.steps))  # forward ↔ reversed order
    w_init = warm_or_guess(hier, ybar_final, w_init, valid, to_forward=flip)
    w_init = None if w_init is None else flip(exact_padding(w_init, ybar_final, layout, comm))
    w, stats = solve_system(hier, ybar_final, w_init, target, min_iter)
    return flip(w), stats


def adjoint_gradient_chunk(step: Step, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, ybar_final: jnp.ndarray,
                           options: MGRITOptions, layout: Layout, comm: Any = SINGLE, w_init: jnp.ndarray | None = None,
                           valid: jnp.ndarray | None = None, target: jnp.ndarray | None = None, min_iter: int = 1):
    """The backward pass of one layer chunk: adjoint states ȳ (:func:`adjoint_chunk`, with its warm start
    ``w_init``/``valid``, ``target`` and ``min_iter``), this chunk's layer gradient (n_local, …;
    :func:`layer_gradient`), ȳ_0 on every chunk, and the adjoint stats: (θ̄ chunk, ȳ_0, ȳ, stats). The one gradient
    assembly of the training solver and of :func:`lpt.layer_parallel`; gathering the chunks' θ̄ is the caller's."""
    ybars, stats = adjoint_chunk(step, theta, hs, ys, ybar_final, options, layout, comm, w_init, valid, target,
                                 min_iter)
    grads = layer_gradient(step, theta, hs, ys, ybars, options.interval_batch)
    return grads, from_chunk(comm, 0, ybars[0]), ybars, stats


def exact_padding(ybars: jnp.ndarray, ybar_final: jnp.ndarray, layout: Layout, comm: Any) -> jnp.ndarray:
    """This chunk's adjoint iterate ȳ (n_local+1, …, forward order) with ȳ_N at the last layer and at every
    identity step after it: those steps propagate ȳ_N exactly. A warm start from an earlier ȳ_N would keep a
    stale value there, and on the reversed index that padding comes *before* the real points, so their
    iterates would depend on how far the depth is padded (on the processor grid)."""
    index = comm.layer_rank() * layout.stride + jnp.arange(layout.n_local + 1)
    return jnp.where((index >= layout.n).reshape(-1, *(1,) * (ybars.ndim - 1)), ybar_final, ybars)


def _linearize_level(step: Step, batch: int | str, level: Level) -> Level:
    """Replace the data (θ, y) of every step of a level by the step's linearisation (vectorised over the
    step axes: (n,) on the coarsest level, (m, n_c) on a level with intervals; ``batch`` steps per call)."""
    theta, ys = level.data
    fn = over_steps(partial(linearize, step), batch, ys[(0,) * level.hs.ndim], level.hs.ndim)
    return level._replace(data=fn(theta, ys, level.hs))


@partial(jax.jit, static_argnames=("step", "options"))
def adjoint_solve(step: Step, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, ybar_final: jnp.ndarray,
                  options: MGRITOptions, w_init: jnp.ndarray | None = None) -> tuple[jnp.ndarray, MGRITStats]:
    """Adjoint states ȳ_n = (∂Φ_n/∂y(y_n))ᵀ ȳ_{n+1}, ȳ_N = ``ybar_final``, by MGRIT on the reversed index.

    Args:
        step: the layer step (static).
        theta: stacked layer parameters, leading axis N.
        hs: step sizes (N,).
        ys: primal states y_0..y_N (N+1, …).
        ybar_final: ȳ_N = ∂loss/∂y_N.
        options: solver settings of the backward solve (static).
        w_init: initial iterate ȳ_0..ȳ_N (N+1, …); default: the cheap coarse-level guess.

    Returns:
        ȳ_0..ȳ_N (N+1, …) and the :class:`MGRITStats` of the solve.
    """
    n = hs.shape[0]
    layout = make_layout(n, options)
    theta, hs = padded(theta, hs, layout)
    ys = pad_states(ys, layout.n_pad + 1)
    w_init = None if w_init is None else pad_states(w_init, layout.n_pad + 1)
    w, stats = adjoint_chunk(step, theta, hs, ys, ybar_final, options, layout, SINGLE, w_init)
    return w[: n + 1], stats


@partial(jax.jit, static_argnames=("step", "batch"))
def layer_gradient(step: Step, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, ybars: jnp.ndarray,
                   batch: int | str = "auto") -> Any:
    """∇_{θ_n} = (∂Φ_n/∂θ_n (y_n))ᵀ ȳ_{n+1} for all layers at once (vectorised over n of the θ-VJP,
    ``batch`` layers per call, :mod:`lpt.mgrit.batching`)."""

    def one(theta_n, y_n, h_n, ybar_next):
        _, vjp = jax.vjp(lambda th: step(th, y_n, h_n), theta_n)
        return vjp(ybar_next)[0]

    return over_intervals(one, batch, ys[0])(theta, ys[:-1], hs, ybars[1:])


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def differentiable_solve(solver: Any, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray, warm: Any) -> tuple[Any, Any]:
    """(y_N, new forward states) by ``solver.forward``; under ``jax.grad`` the cotangents come from
    ``solver.backward``, the adjoint MGRIT solve.

    ``solver`` (static) has ``forward(θ, hs, y0, warm) -> (y_N, states, saved)`` and ``backward(θ, hs, saved,
    ȳ_N, warm) -> (θ̄, ȳ_0, warm cotangent)``. The step sizes get zero cotangents. The "cotangent" of ``warm``
    (a warm start the caller threads through the steps, or None) is the solver's new warm start, not a
    derivative; the cotangent of the returned states is ignored (callers stop their gradient).
    """
    y_final, states, _ = solver.forward(theta, hs, y0, warm)
    return y_final, states


def _solve_fwd(solver, theta, hs, y0, warm):
    y_final, states, saved = solver.forward(theta, hs, y0, warm)
    return (y_final, states), (theta, hs, saved, warm)


def _solve_bwd(solver, residuals, cotangents):
    theta, hs, saved, warm = residuals
    g_theta, ybar_0, warm_cotangent = solver.backward(theta, hs, saved, cotangents[0], warm)
    return g_theta, jnp.zeros_like(hs), ybar_0, warm_cotangent


differentiable_solve.defvjp(_solve_fwd, _solve_bwd)


@dataclass(frozen=True)
class _OneDevice:
    """The :func:`differentiable_solve` solver of :func:`mgrit_propagate`: one device, cold starts."""

    step: Step
    fwd: MGRITOptions
    bwd: MGRITOptions

    def forward(self, theta, hs, y0, warm):
        u, _ = mgrit_solve(self.step, theta, hs, y0, self.fwd)
        return u[-1], None, u

    def backward(self, theta, hs, u, ybar_final, warm):
        ybars, _ = adjoint_solve(self.step, theta, hs, u, ybar_final, self.bwd)
        return layer_gradient(self.step, theta, hs, u, ybars, self.bwd.interval_batch), ybars[0], None


def mgrit_propagate(step: Step, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray, fwd_options: MGRITOptions,
                    bwd_options: MGRITOptions) -> jnp.ndarray:
    """y_N by forward MGRIT; under ``jax.grad`` the cotangents come from the adjoint MGRIT solve.

    Backward: ȳ by :func:`adjoint_solve` from ȳ_N, then θ̄ by :func:`layer_gradient` and ȳ_0 for y0; the
    step sizes get zero cotangents. Drop-in for :func:`lpt.model.propagate`; :func:`differentiable_solve`
    with a one-device solver (:mod:`lpt.api` uses it on every back-end, with warm starts).
    """
    return differentiable_solve(_OneDevice(step, fwd_options, bwd_options), theta, hs, y0, None)[0]


def adjoint_initial_guess(step: Step, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, ybar_final: jnp.ndarray,
                          options: MGRITOptions) -> jnp.ndarray:
    """The cheap adjoint iterate ȳ_0..ȳ_N: coarse adjoint sweep, interpolated to the fine grid."""
    n = hs.shape[0]
    layout = make_layout(n, options)
    theta, hs = padded(theta, hs, layout)
    hier = adjoint_hierarchy(step, theta, hs, pad_states(ys, layout.n_pad + 1), options, layout)
    return initial_guess(hier, ybar_final)[::-1][: n + 1]
