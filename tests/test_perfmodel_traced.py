"""The performance model's counts equal the traced solver's (issue: one description of the algorithm).

:mod:`lpt.perfmodel.work` counts layer steps, the critical path and messages from the level sizes;
:mod:`lpt.perfmodel.trace` counts them in the jaxpr of the real solver (:mod:`lpt.mgrit`) on emulated devices
under ``shard_map`` with the real :class:`~lpt.parallel.comm.MeshComm`. They must agree for every configuration.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from lpt.mgrit.layout import make_layout
from lpt.mgrit.options import MGRITOptions
from lpt.perfmodel.trace import count, marker_step, traced_cycle, traced_solve
from lpt.perfmodel.work import cycle_ops, solve_ops

CONFIGS = [  # (depth, chunks, options): V/F/FMG cycles, FCF and F relaxation, uneven depths, chunked grids
    (64, 1, dict(cfactor=4)),
    (64, 1, dict(cfactor=4, cycle="F")),
    (13, 1, dict(cfactor=2)),
    (100, 1, dict(cfactor=3, nrelax=2, max_levels=3)),
    (64, 2, dict(cfactor=4)),
    (96, 2, dict()),  # the defaults (F-relaxation on the finest level)
    (1025, 4, dict(cfactor=4)),
    (64, 4, dict(cfactor=2, nrelax=2, cycle="F")),
    (70, 4, dict(cfactor=2, nrelax_fine=0, cycle="F")),
]


def _same(traced, ops) -> None:
    assert traced.work == ops.work
    assert traced.critical_path == ops.critical_path
    assert dict(traced.messages) == {k: v for k, v in ops.messages.items() if v}


@pytest.mark.parametrize("depth, chunks, kw", CONFIGS)
def test_one_cycle_counts_as_the_model_says(depth, chunks, kw):
    opts = MGRITOptions(max_iter=2, **kw)
    layout = make_layout(depth, opts, chunks)
    _same(traced_cycle(layout, opts), cycle_ops(layout, opts))


@pytest.mark.parametrize("initial", ["guess", "given"])
@pytest.mark.parametrize("depth, chunks, kw", CONFIGS[::2])
def test_one_solve_counts_as_the_model_says(depth, chunks, kw, initial):
    opts = MGRITOptions(max_iter=2, **kw)
    layout = make_layout(depth, opts, chunks)
    _same(traced_solve(layout, opts, initial), solve_ops(layout, opts, initial=initial))


@pytest.mark.parametrize("chunks", [1, 2])
def test_a_full_multigrid_solve_counts_as_the_model_says(chunks):
    opts = MGRITOptions(max_iter=2, cfactor=4, cycle="FMG")
    layout = make_layout(64, opts, chunks)
    _same(traced_solve(layout, opts, "fmg"), solve_ops(layout, opts, initial="fmg"))


def test_the_counter_sees_scans_and_refuses_data_dependent_loops():
    import jax

    y, theta, h = jnp.ones((5, 3)), jnp.ones(7), jnp.ones(7)

    def sweep(y):  # 7 steps of a batch of 5 states: 35 layer steps, 7 in sequence
        return jax.lax.scan(lambda y, p: (marker_step(p[0], y, p[1]), None), y, (theta, h))[0]

    traced = count(jax.make_jaxpr(sweep)(y))
    assert (traced.work, traced.critical_path) == (35, 7)
    with pytest.raises(ValueError, match="while"):
        count(jax.make_jaxpr(lambda y: jax.lax.while_loop(lambda s: s[0, 0] < 3, sweep, y))(y))
