"""Solver settings, the static level hierarchy, grid layouts and the solver config group."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lpt.mgrit import MGRITOptions, MGRITSolver, level_shapes
from lpt.mgrit.hierarchy import join, pad_states, split

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "solver" / "mgrit.yaml"


@pytest.mark.parametrize("kwargs,option", [
    ({"cfactor": 1}, "solver.cfactor"),
    ({"cfactor": 0}, "solver.cfactor"),
    ({"cfactor": (4, 1)}, "solver.cfactor"),
    ({"cfactor": ()}, "solver.cfactor"),
    ({"cfactor": 2.5}, "solver.cfactor"),
    ({"max_levels": 0}, "solver.max_levels"),
    ({"min_coarse": 0}, "solver.min_coarse"),
    ({"nrelax": -1}, "solver.nrelax"),
    ({"nrelax_fine": -1}, "solver.nrelax_fine"),
    ({"cycle": "W"}, "solver.cycle"),
    ({"restrict": "linear"}, "solver.restrict"),
    ({"max_iter": 0}, "solver.max_iter"),
    ({"abs_tol": -1e-8}, "solver.abs_tol"),
    ({"rel_tol": -0.1}, "solver.rel_tol"),
    ({"abs_tol": float("nan")}, "solver.abs_tol"),
    ({"growth_iter": -1}, "solver.growth_cycles"),
])
def test_bad_settings_raise_naming_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option.replace(".", r"\.")):
        MGRITOptions(**kwargs)


def test_options_are_hashable_and_per_level_values():
    opts = MGRITOptions(cfactor=[2, 4], nrelax=1, nrelax_fine=0)
    assert opts.cfactor == (2, 4) and hash(opts) == hash(MGRITOptions(cfactor=(2, 4), nrelax=1, nrelax_fine=0))
    assert [opts.cfactor_at(level) for level in range(4)] == [2, 4, 4, 4]
    assert [opts.nrelax_at(level) for level in range(3)] == [0, 1, 1]
    assert not opts.has_tolerance and MGRITOptions(rel_tol=1e-3).has_tolerance


def test_level_shapes_uneven_depth():
    shapes = level_shapes(1000, MGRITOptions(cfactor=4, max_levels=4))
    assert [(s.n, s.padded) for s in shapes] == [(1000, 1000), (250, 252), (63, 64), (16, 16)]
    assert shapes[-1].coarsest and not shapes[0].coarsest
    assert [s.n for s in level_shapes(64, MGRITOptions(cfactor=4))] == [64, 16, 4, 1]  # limited by min_coarse
    assert [s.n for s in level_shapes(64, MGRITOptions(cfactor=4, min_coarse=4))] == [64, 16, 4]
    assert len(level_shapes(64, MGRITOptions(max_levels=1))) == 1


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), m=st.integers(2, 8), levels=st.integers(1, 8), min_coarse=st.integers(1, 16))
def test_level_shapes_invariants(n, m, levels, min_coarse):
    shapes = level_shapes(n, MGRITOptions(cfactor=m, max_levels=levels, min_coarse=min_coarse))
    assert shapes[0].n == n and 1 <= len(shapes) <= levels
    for fine, coarse in zip(shapes[:-1], shapes[1:]):
        assert fine.n > min_coarse and coarse.n == fine.n_coarse == fine.padded // m
        assert fine.n <= fine.padded < fine.n + m  # fewer than m identity steps
    assert shapes[-1].coarsest and (shapes[-1].n <= min_coarse or len(shapes) == levels)


@pytest.mark.parametrize("n_c,m,extra", [(1, 2, 0), (5, 4, 3)])
def test_split_join_and_padding(n_c, m, extra):
    u = jnp.arange((n_c * m + 1) * 2, dtype=jnp.float64).reshape(n_c * m + 1, 2)
    grid = split(u, m)
    assert grid.c.shape == (n_c + 1, 2) and grid.f.shape == (m - 1, n_c, 2)
    np.testing.assert_array_equal(grid.c, u[::m])
    np.testing.assert_array_equal(grid.f[0], u[1:-1:m])
    np.testing.assert_array_equal(join(grid), u)
    padded = pad_states(u, u.shape[0] + extra)
    np.testing.assert_array_equal(padded[: u.shape[0]], u)
    np.testing.assert_array_equal(padded[u.shape[0]:], np.broadcast_to(u[-1], (extra, 2)))


# --- the solver config group --------------------------------------------------------------------------
def test_config_file_builds_the_default_solver():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["name"] == "mgrit" and cfg["warm_start"] == "auto" and cfg["on_divergence"] == "serial"
    solver = MGRITSolver.from_config(cfg, full_batch=True)
    assert solver.warm_start and solver.on_divergence == "serial"
    assert solver.fwd == MGRITOptions(cfactor=4, max_levels=10, min_coarse=2, nrelax=1, nrelax_fine=0, max_iter=3,
                                      growth_iter=2)
    assert solver.bwd == MGRITOptions(cfactor=4, max_levels=10, min_coarse=2, nrelax=1, nrelax_fine=0, max_iter=3)
    # missing keys take the config file's defaults
    bare = MGRITSolver.from_config({}, full_batch=True)
    assert (bare.fwd, bare.bwd, bare.min_iters) == (solver.fwd, solver.bwd, solver.min_iters)
    assert solver.control.kind == "fixed" and solver.control.tol == 1e-2 and solver.min_iters == (1, 1)
    assert not MGRITSolver.from_config(cfg, full_batch=False).warm_start


def test_from_config_backward_settings_and_errors():
    solver = MGRITSolver.from_config({"cfactor": [2, 4], "max_levels": 5, "bwd_levels": 3, "abs_tol": 1e-6,
                                      "bwd_tol": 1e-4, "fwd_iters": 3, "bwd_iters": 2, "warm_start": False,
                                      "cycle": "F", "nrelax_fine": 0})
    assert solver.fwd.cfactor == (2, 4) and solver.fwd.max_levels == 5 and solver.bwd.max_levels == 3
    assert solver.fwd.abs_tol == 1e-6 and solver.bwd.abs_tol == 1e-4
    assert (solver.fwd.max_iter, solver.bwd.max_iter, solver.warm_start) == (3, 2, False)
    assert solver.bwd.cycle == "F" and solver.bwd.nrelax_fine == 0
    # growth cycles: the fixed control's (0 turns them off); the adaptive control has its own target
    assert MGRITSolver.from_config({"growth_cycles": 0}).fwd.growth_iter == 0
    both = MGRITSolver.from_config({"growth_cycles": 1, "bwd_growth_cycles": None})
    assert both.fwd.growth_iter == both.bwd.growth_iter == 1
    adaptive = MGRITSolver.from_config({"control": "adaptive"})
    assert adaptive.fwd.growth_iter == adaptive.bwd.growth_iter == 0
    for bad, option in [({"fwd_iters": 0}, "solver.fwd_iters"), ({"bwd_iters": -1}, "solver.bwd_iters"),
                        ({"bwd_levels": 0}, "solver.bwd_levels"), ({"bwd_tol": -1.0}, "solver.bwd_tol"),
                        ({"warm_start": "sometimes"}, "solver.warm_start"), ({"cfactor": 1}, "solver.cfactor"),
                        ({"on_divergence": "ignore"}, "solver.on_divergence"), ({"cfactr": 4}, "cfactr"),
                        ({"growth_cycles": -2}, "solver.growth_cycles"),
                        ({"bwd_growth_cycles": 1.5}, "solver.bwd_growth_cycles"),
                        ({"control": "adaptive", "growth_cycles": -1}, "solver.growth_cycles"),  # checked, if unused
                        ({"control": "adaptive", "bwd_growth_cycles": "x"}, "solver.bwd_growth_cycles")]:
        with pytest.raises(ValueError, match=option.replace(".", r"\.")):
            MGRITSolver.from_config(bad)
