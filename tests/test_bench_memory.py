"""scripts/bench_memory.py: XLA's memory analysis of the compiled step, state kept and donated (issue 13)."""

from __future__ import annotations

import re

import pytest

from test_scripts import script


def test_bench_memory_shows_the_donated_state_aliased():
    proc = script("bench_memory.py", "--config", "-: model.depth=16 solver=mgrit")
    rows = {m.group(1): [float(v) for v in m.group(2).split()]
            for m in re.finditer(r"^\s+(kept|donated)\s+([\d.\s]+)$", proc.stdout, re.M)}
    assert set(rows) == {"kept", "donated"}, proc.stdout
    for state, args, outs, aliased, temp, held in rows.values():
        assert held == pytest.approx(args + outs - aliased + temp, abs=0.02)
        assert args >= state > 0
    assert rows["kept"][3] == 0  # nothing aliased without donation
    assert rows["donated"][3] >= rows["donated"][0] - 0.01  # the whole state is updated in place
    ratio = float(re.search(r"donated / kept: ([\d.]+)", proc.stdout).group(1))
    assert ratio == pytest.approx(rows["donated"][5] / rows["kept"][5], abs=2e-3)


def test_bench_memory_estimate_prints_the_estimate_against_xla():
    """``--estimate``: the line of the memory check's estimate beside XLA's figure, and their ratio (the command that
    calibrated :data:`lpt.train.memory.STATE_ARRAYS` on a GPU), within the 35 % of tests/test_memory.py."""
    proc = script("bench_memory.py", "--estimate", "--config", "-: model.depth=16 solver=serial")
    m = re.search(r"estimate ([\d.]+) MB \(state ([\d.]+), gradient ([\d.]+), layer states ([\d.]+)\), "
                  r"XLA ([\d.]+) MB, estimate / XLA ([\d.]+)", proc.stdout)
    assert m, proc.stdout
    total, state, gradient, layer_states, xla, ratio = map(float, m.groups())
    assert total == pytest.approx(state + gradient + layer_states, abs=0.2)
    assert ratio == pytest.approx(total / xla, rel=0.02) and 0.65 < ratio < 1.35


def sharded_rows(depth: int, *layers: str) -> dict[int, list[float]]:
    """The rows of ``scripts/bench_sharded_memory.py`` for a dense net of ``depth`` layers, by P."""
    proc = script("bench_sharded_memory.py", "--layers", *layers, "--config",
                  f"-: model.depth={depth} solver=mgrit dataset.n_train=200")
    rows = {int(m.group(1)): [float(v) for v in m.group(2).split()]
            for m in re.finditer(r"^ +(\d) +([\d. ]+)$", proc.stdout, re.M)}
    assert set(rows) == set(map(int, layers)), proc.stdout
    return rows


def test_bench_sharded_memory_falls_as_one_over_the_layer_chunks(tmp_path, monkeypatch):
    """The per-device parameters + optimiser state of a 64-layer net on 1, 2 and 4 layer chunks: P times the
    per-device bytes stays within 15 % of one device's (issue 13 target), and the compiled step's arguments (the
    state) fall with P too. The runs' temporary folders are removed."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    rows = sharded_rows(64, "1", "2", "4")
    assert not list(tmp_path.iterdir())
    for layers, (params_opt, warm, arguments, temporaries, gathered, ratio) in rows.items():
        assert ratio == pytest.approx(params_opt * layers / rows[1][0], rel=0.1)  # columns printed to 1e-3 MB
        assert 1.0 <= ratio <= 1.15, (layers, rows)  # the replicated vectors add a little
        assert arguments >= params_opt + warm - 0.002
        assert (gathered == 0) == (layers == 1)  # the coarse levels' states are gathered on chunks
    assert rows[4][2] < 0.3 * rows[1][2]


@pytest.mark.slow(seconds=30)
def test_bench_sharded_memory_falls_as_one_over_the_layer_chunks_at_an_uneven_depth():
    """70 layers on 4 chunks: each device holds its chunk's 24 rows of the layer stacks (16, 16, 16 and 22 layers,
    zero rows after them: the rows its solve uses), so P times the per-device parameters + optimiser state is 96/70
    of one device's and a little more (the replicated vectors)."""
    rows = sharded_rows(70, "1", "4")
    params_opt, ratio = rows[4][0], rows[4][5]
    assert ratio == pytest.approx(params_opt * 4 / rows[1][0], rel=0.1)
    assert 96 / 70 - 0.005 <= ratio <= 96 / 70 + 0.07, rows
