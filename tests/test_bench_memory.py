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
