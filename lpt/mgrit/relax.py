"""Vectorised building blocks of an MGRIT cycle on one level (Falgout et al. 2014, §2–3).

The system on a level reads u_0 = g_0, u_{i+1} − Φ_i(u_i) = g_{i+1}. Every function here works on all
intervals at once: a ``lax.scan`` over the position k inside the interval of the step vmapped over the
intervals (the "stacked batch"), never a Python loop over intervals or layers. A right-hand side ``None``
stands for the homogeneous one of the finest level, g = (g_0, 0, …, 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpt.mgrit.batching import over_intervals, over_steps
from lpt.mgrit.hierarchy import Grid, Level
from lpt.model import Step, propagate_states


def _plus(x: jnp.ndarray, g: jnp.ndarray | None) -> jnp.ndarray:
    return x if g is None else x + g


def landing(grid: Grid) -> jnp.ndarray:
    """The point each step lands on, in step layout (m, n_c, …): F-points u_{jm+1..jm+m−1}, then u_{(j+1)m}."""
    return jnp.concatenate([grid.f, grid.c[None, 1:]], axis=0)


def f_sweep(step: Step, level: Level, c: jnp.ndarray, g: jnp.ndarray | None,
            batch: int | str = "auto") -> tuple[Grid, jnp.ndarray]:
    """F-relaxation from the C-points, u_{jm+k} = Φ_{jm+k−1}(u_{jm+k−1}) + g_{jm+k}, k = 1..m−1, for all
    intervals j at once, and the C-point predictions ĉ_{j+1} = Φ_{jm+m−1}(u_{jm+m−1}) + g_{(j+1)m}.

    ĉ is what a C-relaxation sets, and r_j = ĉ_j − u_{jm} is the residual (which vanishes at F-points
    after F-relaxation).

    Args:
        c: C-point states (n_c+1, …); the last one starts no interval.
        g: right-hand side at the landing points (m, n_c, …), or None (homogeneous).
        batch: intervals per vectorised step call (:mod:`lpt.mgrit.batching`).
    Returns:
        (Grid(c, F-points), ĉ (n_c, …)).
    """
    vstep = over_intervals(step, batch, c[0])

    def body(y, x):
        data, h, gk = x
        y = _plus(vstep(data, y, h), gk)
        return y, y

    # the F-points by a scan over positions 1..m−1, the last step (ĉ) after it: stacking all m outputs and
    # slicing them apart again costs two extra passes over the stacked states (measured on CPU). The scan indexes
    # the per-step inputs in place: scanning over their slices [:-1] copied them (the adjoint's linearisations).
    # lax's index, not jnp's a[k]: jnp's handling of negative traced indices made the tests compile ~15 % longer
    inputs = (level.data, level.hs, g)
    at = lambda k: jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), inputs)  # noqa: E731
    y, f = jax.lax.scan(lambda y, k: body(y, at(k)), c[:-1], jnp.arange(level.hs.shape[0] - 1))
    data, h, gk = jax.tree_util.tree_map(lambda a: a[-1], inputs)
    return Grid(c, f), _plus(vstep(data, y, h), gk)


def fas_rhs(step: Step, level: Level, v: Grid, r: Grid, batch: int | str = "auto") -> jnp.ndarray:
    """FAS right-hand side on a coarse level with intervals (Falgout et al. 2014, Alg. 2, step 3).

        g^c_0 = v_0,   g^c_i = r_i + (v_i − Φ^c_{i−1}(v_{i−1})),   i ≥ 1,

    for the restricted fine iterate v and residual r on this level's grid. g^c_0 = v_0 is implicit (the
    first C-point is never changed); returns g^c_{i≥1} at the landing points (m, n_c, …).
    """
    left = jnp.concatenate([v.c[None, :-1], v.f], axis=0)  # (m, n_c, …): the state each step starts from
    phi = over_steps(step, batch, v.c[0], 2)(level.data, left, level.hs)
    return landing(r) + (landing(v) - phi)


def fas_rhs_serial(step: Step, level: Level, v: jnp.ndarray, r: jnp.ndarray, batch: int | str = "auto") -> jnp.ndarray:
    """:func:`fas_rhs` on the coarsest level (flat layout): g^c_i = r_i + (v_i − Φ^c_{i−1}(v_{i−1})), i ≥ 1."""
    return r[1:] + (v[1:] - over_intervals(step, batch, v[0])(level.data, v[:-1], level.hs))


def serial_sweep(step: Step, level: Level, g0: jnp.ndarray, g: jnp.ndarray | None) -> jnp.ndarray:
    """Exact solve of a level by forward substitution: u_0 = g_0, u_{i+1} = Φ_i(u_i) + g_{i+1}.

    ``g`` holds g_1..g_n (n, …). With the homogeneous right-hand side (``g`` None) it *is*
    :func:`lpt.model.propagate_states`, so a one-level solve agrees with serial propagation bit for bit.
    """
    if g is None:
        return propagate_states(step, level.data, level.hs, g0)

    def body(y, x):
        data, h, gi = x
        y = step(data, y, h) + gi
        return y, y

    _, u = jax.lax.scan(body, g0, (level.data, level.hs, g))
    return jnp.concatenate([g0[None], u], axis=0)


def residual_norm(chat: jnp.ndarray, c: jnp.ndarray, real: jnp.ndarray, comm) -> jnp.ndarray:
    """‖r‖₂ of an F-relaxed iterate: the residual lives at the C-points, r_j = ĉ_j − u_{jm}; summed over the
    chunks and the data-parallel ranks, over the intervals that hold a real step (``real``: (n_c,) bool;
    identity padding is left out)."""
    sq = jnp.square(chat - c[1:]).reshape(chat.shape[0], -1).sum(axis=1)
    return jnp.sqrt(comm.data_sum(comm.layer_sum(jnp.sum(jnp.where(real, sq, 0)))))
