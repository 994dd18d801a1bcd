"""The work of the real solver, counted by tracing it (issue: one description of the algorithm).

:mod:`lpt.perfmodel.work` counts layer steps and messages from the level sizes, by a copy of the cycle's
control flow. This module counts the same quantities from the solver itself: it traces one MGRIT cycle (or a
whole solve) of :mod:`lpt.mgrit` on ``chunks`` emulated devices under ``jax.shard_map`` with the real
:class:`~lpt.parallel.comm.MeshComm`, and walks the jaxpr:

* the step is a *marker step* ``y + h·sin(θ·y)`` on a state of ``STATE`` numbers, so every ``sin`` in the
  jaxpr is one evaluation of Φ, vmapped over ``size/STATE`` intervals: its work is that many layer steps, and it
  is one operation on the critical path;
* ``ppermute`` is a halo shift, ``all_gather`` a gather of a level, ``psum`` a sum over the chunks;
* an equation inside a ``scan`` of length L counts L times (relaxation sweeps; ``fori_loop`` with static
  bounds is a scan), the branches of a ``cond`` are refused (a count would depend on the data), and the body of
  a ``while_loop`` is refused too: trace a fixed number of cycles.

The tests compare :func:`traced_cycle` and :func:`traced_solve` with :func:`lpt.perfmodel.work.cycle_ops` and
:func:`~lpt.perfmodel.work.solve_ops` for V, F and FMG cycles, FCF relaxation, uneven depths and chunked grids,
so the model cannot drift from the code unnoticed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lpt.mgrit.cycle import cycle
from lpt.mgrit.layout import Layout, chunk_real, spread
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.hierarchy import split
from lpt.mgrit.relax import residual_norm
from lpt.mgrit.solve import forward_hierarchy, initial_guess, solve_system
from lpt.parallel.comm import MeshComm

STATE = 3
"""Numbers in the marker step's state (one sample of width 3): a ``sin`` of size k·STATE is k layer steps."""

MESSAGES = {"ppermute": "shift", "all_gather": "allgather", "psum": "allreduce"}


def marker_step(theta: jnp.ndarray, y: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
    """Φ(y) = y + h·sin(θ·y): one ``sin`` per step evaluation, identity at h = 0."""
    return y + h * jnp.sin(theta * y)


@dataclass
class Traced:
    """What one traced program does on one chunk: ``work`` (layer steps), ``critical_path`` (vmapped step
    evaluations in sequence) and ``messages`` ((kind, states per sample) → count, as
    :attr:`lpt.perfmodel.work.Ops.messages`: shift, allgather (states sent by one chunk), allreduce (0: a
    scalar))."""

    work: float = 0.0
    critical_path: int = 0
    messages: Counter = field(default_factory=Counter)

    def __sub__(self, other: "Traced") -> "Traced":
        messages = Counter(self.messages)
        messages.subtract(other.messages)
        return Traced(self.work - other.work, self.critical_path - other.critical_path, +messages)


def _sub_jaxprs(eqn) -> list:
    return [v.jaxpr if hasattr(v, "jaxpr") else v for k, v in eqn.params.items()
            if k in ("jaxpr", "call_jaxpr", "fun_jaxpr")]


def count(jaxpr, times: int = 1, into: Traced | None = None) -> Traced:
    """Walk ``jaxpr`` (a ``Jaxpr`` or ``ClosedJaxpr``) and add its marker steps and messages, each ``times``."""
    out = Traced() if into is None else into
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "sin":
            out.work += times * prod(eqn.outvars[0].aval.shape) / STATE
            out.critical_path += times
        elif name in MESSAGES:
            size = prod(eqn.invars[0].aval.shape)
            out.messages[(MESSAGES[name], size // STATE)] += times
        elif name == "scan":
            count(eqn.params["jaxpr"], times * eqn.params["length"], out)
        elif name in ("while", "cond"):
            raise ValueError(f"a {name} in the traced program: its count depends on the data; trace fixed cycles")
        else:
            for sub in _sub_jaxprs(eqn):
                count(sub, times, out)
    return out


def _mesh(chunks: int) -> jax.sharding.Mesh:
    devices = jax.devices()
    if len(devices) < chunks:
        raise ValueError(f"tracing {chunks} chunks needs {chunks} devices, {len(devices)} are visible "
                         f"(XLA_FLAGS=--xla_force_host_platform_device_count={chunks})")
    return jax.sharding.Mesh(np.asarray(devices[:chunks]).reshape(1, chunks), ("data", "layers"))


def _traced(program, layout: Layout, options: MGRITOptions) -> Traced:
    """Trace ``program(hierarchy, y0)`` on the chunks of ``layout`` and count one chunk's part, less the
    building of the hierarchy (restriction and the gather of the restricted weights, parameter messages that
    :func:`lpt.perfmodel.work.gradient_ops` counts apart)."""
    comm = MeshComm(layers=layout.chunks, data=1)

    def run(prog):
        def per_chunk(theta, hs, y0):
            return prog(forward_hierarchy(marker_step, theta, hs, options, layout, comm), y0)

        fn = jax.shard_map(per_chunk, mesh=_mesh(layout.chunks), in_specs=(P("layers"), P("layers"), P()),
                           out_specs=P("layers"), check_vma=False)
        theta = spread(jnp.ones(layout.n), layout)  # each chunk's arrays, dead steps included
        hs = jnp.concatenate([chunk_real(jnp.ones(layout.n), p, layout) for p in range(layout.chunks)])
        return count(jax.make_jaxpr(fn)(theta, hs, jnp.ones((1, STATE))))

    built = run(lambda hier, y0: jnp.concatenate(jax.tree_util.tree_leaves(hier.levels[0]))[None])
    return run(program) - built


def traced_cycle(layout: Layout, options: MGRITOptions) -> Traced:
    """One cycle on the finest level (F-relaxed with its C-point predictions), as :func:`cycle_ops` counts it,
    with the residual norm's sum over the chunks."""

    def one(hier, y0):
        grid = split(jnp.broadcast_to(y0, (layout.n_local + 1, *y0.shape)), hier.shapes[0].m)
        grid, chat = cycle(hier._replace(g0=y0), 0, grid, None, grid.c[1:], "F" if options.cycle == "F" else "V")
        return grid.c + residual_norm(chat, grid.c, hier.levels[0].hs.sum(axis=0) > 0, hier.comm)

    return _traced(one, layout, options)


def traced_solve(layout: Layout, options: MGRITOptions, initial: str = "guess") -> Traced:
    """One solve of ``options.max_iter`` cycles (no tolerance, no growth cycles) as the training step runs it:
    from the cheap coarse-level guess (``initial="guess"``, a cold start), a given iterate (``"given"``, a warm
    start) or FMG's nested iteration (``"fmg"``, with ``cycle="FMG"``)."""
    if options.has_tolerance or options.growth_iter:
        raise ValueError("traced_solve counts fixed cycles: no tolerance and growth_iter=0")

    def solve(hier, y0):
        u_init = {"guess": lambda: initial_guess(hier, y0), "fmg": lambda: None,
                  "given": lambda: jnp.broadcast_to(y0, (layout.n_local + 1, *y0.shape))}[initial]()
        u, stats = solve_system(hier, y0, u_init)
        return u[1:] + stats.residuals.sum()

    return _traced(solve, layout, options)
