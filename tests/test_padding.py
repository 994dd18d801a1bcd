"""Padding an uneven depth: each level is padded only to its own whole intervals (DESIGN §4), and the identity
steps change no iterate at a real layer.

Before, the fine level was padded to a multiple of ∏ m_ℓ (N = 1025 → 2048 steps with cfactor 4 and 6 levels); now
N = 1025 runs 1028 fine steps. The reference for "no iterate changes" is the same network padded by hand with
identity steps to such a multiple, where every level splits exactly (the old layout).
"""

from __future__ import annotations

import math
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


def test_uneven_last_chunk_pads_like_one_chunk():
    """On P layer chunks the first P−1 hold s fine steps (s a multiple of the chunked levels' ∏ m_ℓ), the last the
    rest, padded per level like the one-chunk solve: the chunks' levels add up to the global ones, and every chunk's
    static local size is the largest chunk's. N = 1025 on 2 chunks, cfactor 4: s = 512, the last chunk 513 steps →
    516 / 129→132 / 33→36 / 9→12 (not 1056 or 2048 fine steps as before)."""
    opts = MGRITOptions(cfactor=4, max_levels=6, min_coarse=2, nrelax=1)
    layout = make_layout(1025, opts, chunks=2)
    assert (layout.n_pad, layout.stride, layout.dist) == (1028, 512, 4)
    assert [s.n for s in layout.local_shapes] == [516, 132, 36, 12, 3]
    for shape, counts in zip(layout.shapes[: layout.dist], layout.counts):
        assert sum(counts.padded) == shape.padded and counts.real[:-1] == counts.padded[:-1]
    assert sum(layout.counts[-1].real) == layout.shapes[layout.dist].n
    assert make_layout(1024, opts, chunks=2).dist == 4  # an exact depth keeps every level with intervals chunked


@pytest.mark.parametrize("m,levels", [(4, 6), (2, 10), (4, 3)])
def test_largest_chunk_of_depth_1025_is_the_least_possible(m, levels):
    """The performance model's count of one cycle on the largest chunk (counted, not timed): N = 1025 within 5 % of
    N = 1024 on 1 and 2 chunks. On more chunks the extra step costs one more interval on every chunked level of the
    chunk that holds it, a share that grows towards the coarse levels; the layout is then the best a layout of
    whole intervals can be: every chunked level holds ⌈intervals/P⌉ intervals on the largest chunk, the least any
    chunking of that level allows."""
    opts = MGRITOptions(cfactor=m, max_levels=levels, min_coarse=2, nrelax=1)
    for chunks in (1, 2, 4, 8):
        work = [cycle_ops(make_layout(n, opts, chunks), opts).work for n in (1024, 1025)]
        layout = make_layout(1025, opts, chunks)
        if chunks <= 2:
            assert work[1] <= 1.05 * work[0], (chunks, work)
        assert work[1] <= 1.16 * work[0], (chunks, work)  # 2.0× (1, 2 chunks), 1.15× and 1.39× before
        for shape, local in zip(layout.shapes[: layout.dist], layout.local_shapes):
            assert local.n == shape.m * -(-shape.n_coarse // chunks), (chunks, layout)


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
    on one device and on 2 emulated layer chunks (its value is not checked: smoke tests of benchmarks must not
    depend on timing)."""
    from test_scripts import script

    proc = script("bench_padding.py", "--depths", "64", "65", "--layers", "2", "--batch", "4", "--repeats", "1",
                  "--time-chunks", "2")
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+", line)]
    table = {(int(r[0]), int(r[1])): r for r in rows}
    opts = MGRITOptions(cfactor=4, max_levels=6, min_coarse=2, nrelax=1)
    for (depth, chunks), row in table.items():
        layout = paired_layouts(depth, opts, opts, chunks, tail=True)[0]
        assert (int(row[2]), int(row[3])) == ((64, 0) if depth == 64 else (64, 1)), row  # 65: a tail of 1 layer
        assert (int(row[4]), int(row[5])) == (layout.n_pad, layout.dist), row
        assert float(row[7]) == cycle_ops(layout, opts).work
        assert row[-1] == f"{100 * layout.extra_work_per_chunk:.1f}%", row
    assert set(table) == {(64, 1), (65, 1), (64, 2), (65, 2)}
    assert len(re.findall(r"N = +6[45]: one-shot gradient [\d.]+ ms \(measured / N = 64: [\d.]+\)", proc.stdout)) == 2
    assert len(re.findall(r"N = +6[45]: one-shot gradient on 2 chunks [\d.]+ ms \(measured / N = 64: [\d.]+\)",
                          proc.stdout)) == 2, proc.stdout


def test_forward_and_adjoint_share_one_chunking():
    """The adjoint solve runs on the forward solve's chunks of states: both layouts cut the layers at the same stride
    into arrays of the same static size, whatever the two solves' levels and coarsening factors, on any number of
    chunks; each pads only its own levels."""
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
                assert f.n_local == b.n_local >= max(f.n_pad, b.n_pad) - (chunks - 1) * f.stride, (depth, chunks)
                assert f.stride == b.stride and min(f.n_pad, b.n_pad) >= depth, (depth, chunks)
                for layout, opts in ((f, fwd), (b, bwd)):  # each pads only its own levels, as on one chunk
                    assert layout.n_pad == make_layout(depth, opts).n_pad, (depth, chunks)
                    if chunks > 1:  # every chunk boundary a C-point of every chunked level
                        assert layout.dist >= 1 and all(layout.stride % math.prod(s.m for s in layout.shapes[:d]) == 0
                                                        for d in range(1, layout.dist + 1)), (depth, chunks)
                        assert all(min(c.real) >= 1 for c in layout.counts), (depth, chunks)



def test_extra_work_per_chunk_is_the_padding_and_the_uneven_split():
    """The largest chunk's steps per sweep of all levels against the real steps split evenly, by hand: N = 1025,
    cfactor 4 on 4 chunks: chunks of 256 + 256 + 256 + 257 layers, the largest chunk's chunked levels 260 / 68 /
    20 / 8 steps and the gathered levels 8 (5 steps padded) + 2: 366 steps; the real levels 1025 / 257 / 65 / 17
    split over 4, and 5 + 2 gathered: 348. On one chunk it is the padding's extra work; 1024 on 4 chunks splits
    evenly."""
    from lpt.mgrit.layout import make_layout
    from lpt.mgrit.options import MGRITOptions

    opts = MGRITOptions()
    four = make_layout(1025, opts, 4)
    assert [s.n for s in four.local_shapes[:-1]] == [260, 68, 20, 8] and four.work == 366
    assert [s.padded for s in four.shapes[four.dist:]] == [8, 2]
    assert four.extra_work_per_chunk == pytest.approx(366 / ((1025 + 257 + 65 + 17) / 4 + 5 + 2) - 1, abs=1e-15)
    for n in (1025, 65, 70, 13):
        one = make_layout(n, opts, 1)
        assert one.extra_work_per_chunk == pytest.approx(one.extra_work, abs=1e-15)
    assert make_layout(1024, opts, 4).extra_work_per_chunk == 0
