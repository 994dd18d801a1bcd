"""Vectorised building blocks of an MGRIT cycle on one level (Falgout et al. 2014, §2–3).

The system on a level reads u_0 = g_0, u_{i+1} − Φ_i(u_i) = g_{i+1}. Every function here works on all
intervals at once: a ``lax.scan`` over the position k inside the interval of the step vmapped over the
intervals (the "stacked batch"), never a Python loop over intervals or layers. A right-hand side ``None``
stands for the homogeneous one of the finest level, g = (g_0, 0, …, 0).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lpt.mgrit.hierarchy import Grid, Level
from lpt.model import propagate_states

Step = Callable[[Any, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _plus(x: jnp.ndarray, g: jnp.ndarray | None) -> jnp.ndarray:
    return x if g is None else x + g


def _at(data: Any, k: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[k], data)


def f_relax(step: Step, level: Level, c: jnp.ndarray, g: Grid | None) -> jnp.ndarray:
    """F-relaxation: u_{jm+k} = Φ_{jm+k−1}(u_{jm+k−1}) + g_{jm+k}, k = 1..m−1, from the C-points u_{jm}.

    Args:
        c: C-point states (n_c+1, …); the last one starts no interval.
    Returns:
        F-point states (m−1, n_c, …).
    """
    vstep = jax.vmap(step)
    xs = (_at(level.data, slice(None, -1)), level.hs[:-1], None if g is None else g.f)

    def body(y, x):
        data, h, gk = x
        y = _plus(vstep(data, y, h), gk)
        return y, y

    _, f = jax.lax.scan(body, c[:-1], xs)
    return f


def c_predict(step: Step, level: Level, f: jnp.ndarray, g: Grid | None) -> jnp.ndarray:
    """The C-point values a C-relaxation would set: ĉ_j = Φ_{jm−1}(u_{jm−1}) + g_{jm}, j = 1..n_c.

    The fine residual at the C-points is r_j = ĉ_j − u_{jm}; after F-relaxation it vanishes at F-points.
    """
    y = jax.vmap(step)(_at(level.data, -1), f[-1], level.hs[-1])
    return _plus(y, None if g is None else g.c[1:])


def f_sweep(step: Step, level: Level, c: jnp.ndarray, g: Grid | None) -> tuple[Grid, jnp.ndarray]:
    """F-relaxation from the C-points ``c`` and the C-point predictions ĉ: returns (Grid(c, f), ĉ)."""
    f = f_relax(step, level, c, g)
    return Grid(c, f), c_predict(step, level, f, g)


def fas_rhs(step: Step, level: Level, v: Grid, r: Grid) -> Grid:
    """FAS right-hand side on a coarse level with intervals (Falgout et al. 2014, Alg. 2, step 3).

        g^c_0 = v_0,   g^c_i = r_i + (v_i − Φ^c_{i−1}(v_{i−1})),   i ≥ 1,

    where v is the restricted fine iterate and r the restricted fine residual, both on this level's grid.
    """
    left = jnp.concatenate([v.c[None, :-1], v.f], axis=0)  # (m, n_c, …): the state each step starts from
    phi = jax.vmap(jax.vmap(step))(level.data, left, level.hs)  # (m, n_c, …): Φ at every point
    return Grid(c=jnp.concatenate([v.c[:1], r.c[1:] + (v.c[1:] - phi[-1])], axis=0), f=r.f + (v.f - phi[:-1]))


def fas_rhs_serial(step: Step, level: Level, v: jnp.ndarray, r: jnp.ndarray) -> jnp.ndarray:
    """:func:`fas_rhs` on the coarsest level (flat layout): g^c = (v_0, r_i + v_i − Φ^c_{i−1}(v_{i−1}))."""
    phi = jax.vmap(step)(level.data, v[:-1], level.hs)
    return jnp.concatenate([v[:1], r[1:] + (v[1:] - phi)], axis=0)


def serial_sweep(step: Step, level: Level, g0: jnp.ndarray, g: jnp.ndarray | None) -> jnp.ndarray:
    """Exact solve of a level by forward substitution: u_0 = g_0, u_{i+1} = Φ_i(u_i) + g_{i+1}.

    With the homogeneous right-hand side (``g`` None) it *is* :func:`lpt.model.propagate_states`, so a
    one-level solve agrees with serial propagation bit for bit.
    """
    if g is None:
        return propagate_states(step, level.data, level.hs, g0)

    def body(y, x):
        data, h, gi = x
        y = step(data, y, h) + gi
        return y, y

    _, u = jax.lax.scan(body, g0, (level.data, level.hs, g[1:]))
    return jnp.concatenate([g0[None], u], axis=0)


def residual_norm(chat: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
    """‖r‖₂ of an F-relaxed iterate: the residual lives at the C-points, r_j = ĉ_j − u_{jm}."""
    return jnp.sqrt(jnp.sum(jnp.square(chat - c[1:])))
