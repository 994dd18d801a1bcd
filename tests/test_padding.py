"""Padding an uneven depth: each level is padded only to its own whole intervals (DESIGN §4), and the identity
steps change no iterate at a real layer.

Before, the fine level was padded to a multiple of ∏ m_ℓ (N = 1025 → 2048 steps with cfactor 4 and 6 levels); now
N = 1025 runs 1028 fine steps. The reference for "no iterate changes" is the same network padded by hand with
identity steps to such a multiple, where every level splits exactly (the old layout).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, adjoint_solve, mgrit_solve
from lpt.mgrit.hierarchy import pad_steps
from lpt.mgrit.layout import make_layout, paired_layouts
from lpt.model import ResNet, propagate_states
from lpt.perfmodel.work import cycle_ops

F64 = jnp.float64


def test_each_level_pads_to_its_own_intervals():
    opts = MGRITOptions(cfactor=4, max_levels=6, min_coarse=2)
    layout = make_layout(1025, opts)
    assert layout.n_pad == 1028
    assert [s.n for s in layout.shapes] == [1028, 257, 65, 17, 5, 2]
    assert [s.padded for s in layout.shapes] == [1028, 260, 68, 20, 8, 2]
    assert layout.extra_work == pytest.approx((1028 + 260 + 68 + 20 + 8 + 2) / (1025 + 257 + 65 + 17 + 5 + 2) - 1)
    for depth in (1025, 1100, 4097, 513):
        for m in (2, 4):
            assert make_layout(depth, MGRITOptions(cfactor=m, max_levels=10, min_coarse=2)).extra_work <= 0.05


@pytest.mark.parametrize("m,levels", [(2, 10), (4, 6), (4, 3)])
def test_one_cycle_of_depth_1025_costs_within_5_percent_of_1024(m, levels):
    """The performance model's count of the layer steps of one cycle (the solver's layout, one rank)."""
    opts = MGRITOptions(cfactor=m, max_levels=levels, min_coarse=2, nrelax=1)
    work = [cycle_ops(make_layout(n, opts), opts).work for n in (1024, 1025)]
    assert work[1] <= 1.05 * work[0], work


def test_chunked_levels_are_chosen_to_limit_the_padding():
    """On P layer chunks every chunked level multiplies the fine padding by its m_ℓ; the layout chunks fewer levels
    when that costs each chunk less work: N = 1025 on 2 chunks pads to 1056, not 2048."""
    opts = MGRITOptions(cfactor=4, max_levels=6, min_coarse=2, nrelax=1)
    layout = make_layout(1025, opts, chunks=2)
    assert (layout.n_pad, layout.dist) == (1056, 2)
    assert all(s.n % (2 * s.m) == 0 for s in layout.shapes[: layout.dist])  # whole intervals on every chunk
    work = [cycle_ops(make_layout(n, opts, chunks=2), opts).work for n in (1024, 1025)]
    assert work[1] <= 1.2 * work[0], work
    assert make_layout(1024, opts, chunks=2).dist == 4  # an exact depth keeps every level with intervals chunked


def _problem(depth: int):
    model = ResNet(input_shape=(2,), num_outputs=3, depth=depth, width=4, T=5.0)
    params = model.init(jax.random.PRNGKey(0), F64)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 2), F64)
    y0 = model.open(params, x)
    return model, params["layers"], model.step_sizes(F64), y0


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("depth,by_hand,m,levels,cycle", [(37, 45, 3, 3, "V"), (37, 45, 3, 3, "F"),
                                                          (37, 45, 3, 3, "FMG"), (257, 512, 4, 5, "V")])
def test_padding_changes_no_iterate(depth, by_hand, m, levels, cycle):
    """Two cycles of forward and adjoint MGRIT (the adjoint also warm-started) on the per-level padded layout give
    the states of the network padded by hand to ``by_hand`` steps."""
    model, theta, hs, y0 = _problem(depth)
    theta_p, hs_p = pad_steps(theta, hs, by_hand)
    ys = propagate_states(model.step, theta, hs, y0)
    ys_p = propagate_states(model.step, theta_p, hs_p, y0)
    ybar = jnp.ones_like(y0)
    # a warm start from another step: any iterate, but wrong at ȳ_N; the identity steps propagate ȳ_N exactly, so
    # the solver replaces it there, as it must on the hand-padded net (which cannot know they are padding)
    stale = ys[::-1] * 0.3
    stale_p = jnp.concatenate([stale[:depth], jnp.broadcast_to(ybar, (by_hand - depth + 1, *ybar.shape))])
    opts = MGRITOptions(cfactor=m, max_levels=levels, min_coarse=2, max_iter=2, cycle=cycle)
    assert make_layout(depth, opts).n_pad < by_hand == make_layout(by_hand, opts).n_pad
    u, st = mgrit_solve(model.step, theta, hs, y0, opts)
    u_p, _ = mgrit_solve(model.step, theta_p, hs_p, y0, opts)
    assert float(st.residuals[-1]) > 1e-8  # not converged: the iterates depend on the hierarchy
    np.testing.assert_allclose(u, u_p[: depth + 1], rtol=0, atol=1e-13)
    # the cold adjoint start is the nested iteration the forward solve checks already, but for V padded in front
    for start, w_init in [("warm", (stale, stale_p))] + ([("cold", (None, None))] if cycle == "V" else []):
        w, _ = adjoint_solve(model.step, theta, hs, ys, ybar, opts, w_init[0])
        w_p, _ = adjoint_solve(model.step, theta_p, hs_p, ys_p, ybar, opts, w_init[1])
        np.testing.assert_allclose(w, w_p[: depth + 1], rtol=0, atol=1e-13, err_msg=f"adjoint, {start} start")


@pytest.mark.slow(seconds=15)
def test_bench_padding_prints_layouts_counts_and_times():
    """scripts/bench_padding.py: the layout and the model's counts per depth and chunk count, and a time per depth
    (its value is not checked: smoke tests of benchmarks must not depend on timing)."""
    from test_scripts import script

    proc = script("bench_padding.py", "--depths", "64", "65", "--layers", "2", "--batch", "4", "--repeats", "1")
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+", line)]
    table = {(int(r[0]), int(r[1])): r for r in rows}
    opts = MGRITOptions(cfactor=4, max_levels=6, min_coarse=2, nrelax=1)
    for (depth, chunks), row in table.items():
        layout = make_layout(depth, opts, chunks)
        assert (int(row[2]), int(row[3])) == (layout.n_pad, layout.dist), row
        assert float(row[5]) == cycle_ops(layout, opts).work
    assert set(table) == {(64, 1), (65, 1), (64, 2), (65, 2)}
    assert len(re.findall(r"N = +6[45]: one-shot gradient [\d.]+ ms \(measured / N = 64: [\d.]+\)", proc.stdout)) == 2


def test_forward_and_adjoint_share_one_padded_depth():
    """The adjoint solve runs on the forward solve's chunks of states: both layouts pad to the same depth, whatever
    the two solves' levels and coarsening factors, and on any number of chunks."""
    pairs = [(MGRITOptions(cfactor=4), MGRITOptions(cfactor=4, max_levels=3)),
             (MGRITOptions(cfactor=2), MGRITOptions(cfactor=4)),
             (MGRITOptions(cfactor=(2, 4)), MGRITOptions(cfactor=3))]
    for fwd, bwd in pairs:
        for chunks in (1, 2, 3, 4, 8):
            for depth in range(8, 300, 7):
                try:
                    f, b = paired_layouts(depth, fwd, bwd, chunks)
                except ValueError:  # too many chunks for the depth
                    continue
                assert f.n_pad == b.n_pad >= depth and f.n_local == b.n_local, (depth, chunks)
                if chunks > 1:  # whole intervals on every chunk of each chunked level
                    for layout in (f, b):
                        assert all(s.n % (chunks * s.m) == 0 for s in layout.shapes[: layout.dist]), (depth, chunks)
