"""The benchmark drivers in scripts/ (bench_*.py, time_preset_step.py) run (tiny sizes) and print or write what
they promise."""

from __future__ import annotations

import json
import re

import pytest

from test_parallel_comm import mpirun
from test_scripts import SCRIPTS, script


@pytest.mark.slow(seconds=30)
def test_bench_solver_prints_the_work_model_ratio():
    # large enough that one cycle is well above timer noise (the marginal cycle time is a difference of timings)
    proc = script("bench_solver.py", "--depth", "256", "--width", "8", "--batch", "64", "--cfactor", "4",
                  "--levels", "4", "--repeats", "3")
    found = re.search(r"measured / predicted\s+(\S+)", proc.stdout)
    assert found, proc.stdout
    # the marginal cycle time is a difference of two timings: under load it may not be resolved, and then the
    # script says so instead of printing a ratio (a smoke test must not depend on timing)
    if found.group(1) == "n/a":
        assert "not resolved (below timer noise" in proc.stdout, proc.stdout
    else:
        assert float(found.group(1)) >= 0
    assert re.search(r"one-shot step .* ms", proc.stdout)


@pytest.mark.slow(seconds=24)
def test_bench_parareal_runs(tmp_path):
    out = tmp_path / "parareal.json"
    proc = script("bench_parareal.py", "--layer", "dense", "--input-shape", "4", "--depth", "12", "--batch", "8",
                  "--num-parallel", "1,3", "--repeats", "2", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["original_ms"] > 0 and sorted(result["parareal_ms"]) == ["1", "3"]
    for row in result["parareal_ms"].values():
        assert all(row[part] > 0 for part in ("pre", "parallel", "coarse", "post", "total"))
        assert row["ideal"] == pytest.approx(row["pre"] + row["1 subnet"] + row["coarse"] + row["post"])
    assert "N_p=3" in proc.stdout


def test_bench_comm_fits_a_line(tmp_path):
    """Messages between 2 emulated devices (parallel=mesh): one time per size, and a stored fit whose per-byte
    cost is positive (a 4 MiB message takes longer than an 8-byte one)."""
    cal = tmp_path / "cal.json"
    sizes = ["8", "65536", "4194304"]
    proc = script("bench_comm.py", "mesh", "--sizes", *sizes, "--repeats", "3", "--save", str(cal))
    for nbytes in sizes:
        assert re.search(rf"^\s+{nbytes} B\s+[\d.]+ us\s+fit", proc.stdout, re.M), proc.stdout
    costs = json.loads(cal.read_text())["comm"]["mesh"]
    assert costs["alpha"] >= 0 and costs["beta"] > 0


@pytest.mark.slow(seconds=20)
def test_bench_layers_prints_ratios_for_every_kind():
    """scripts/bench_layers.py --quick: one row per layer kind, formulation and state layout with serial and
    relaxation times per layer step and their ratios (the ratio columns are the quotients of the time columns)."""
    proc = script("bench_layers.py", "--quick", "--intervals", "4", "--repeats", "1")
    assert re.search(r"throughput yardstick: 2048x2048 matmul, float32: [\d.]+ GFLOP/s", proc.stdout)
    # layer width batch image impl layout  serial (compile)  relax-vmap (compile)  relax-auto (compile)  batch  ratios
    row = re.compile(r"^(dense|conv2)\s+\d+\s+\d+\s+\S+\s+(\S+)\s+(\S+)\s+"
                     r"([\d.]+) \(\s*[\d.]+\)\s+([\d.]+) \(\s*[\d.]+\)"
                     r"\s+([\d.]+) \(\s*[\d.]+\)\s+\d+\s+([\d.]+)\s+([\d.]+)$", re.M)
    rows = row.findall(proc.stdout)
    assert {r[:3] for r in rows} == {("dense", "-", "-"), *(("conv2", impl, layout) for impl in ("matmul", "xla")
                                                            for layout in ("NHWC", "CNHW"))}, proc.stdout
    for _, _, _, *numbers in rows:
        t_ser, t_vmap, t_auto, r_vmap, r_auto = map(float, numbers)
        assert min(t_ser, t_vmap, t_auto) >= 0
        for t, ratio in ((t_vmap, r_vmap), (t_auto, r_auto)):
            assert within_rounding(ratio, t, t_ser, digits=3), (ratio, t, t_ser)


def within_rounding(ratio: float, t: float, base: float, digits: int) -> bool:
    """Whether a printed ratio (2 decimals) can be the quotient of two times printed with `digits` decimals:
    the check holds whatever the times are, even when one rounds to 0 at tiny sizes."""
    half = 0.5 * 10.0 ** -digits
    if base <= half:  # the divisor's printed value does not bound the quotient
        return ratio >= 0
    low, high = max(t - half, 0.0) / (base + half), (t + half) / (base - half)
    return low - 0.006 <= ratio <= high + 0.006


def _convnet_rows(stdout: str) -> dict[str, tuple[float, float]]:
    """Each timed row: (time in s, ratio to the yardstick), as printed."""
    return {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^  (\S.*?)\s+([\d.]+) s \(\s*[-\d.]+\)\s+/ yardstick\s+([\d.]+)", stdout,
                                 re.M)}


@pytest.mark.slow(seconds=30)
def test_bench_convnet_single_process():
    proc = script("bench_convnet.py", "--depths", "8", "--channels", "2", "--image", "6", "--batch", "2",
                  "--repeats", "1")
    rows = _convnet_rows(proc.stdout)
    assert set(rows) == {"yardstick", "lpt serial", "layer-parallel, 1 rank", "layer-parallel skip, 1 rank"}
    assert rows["yardstick"][1] == 1.0
    base = rows["yardstick"][0]
    assert all(within_rounding(ratio, t, base, digits=3) for t, ratio in rows.values()), proc.stdout


@pytest.mark.slow(seconds=19)
def test_bench_convnet_on_two_mpi_ranks():
    proc = mpirun(2, SCRIPTS / "bench_convnet.py", "--depths", "8", "--channels", "2", "--image", "6", "--batch",
                  "2", "--repeats", "1", "--backend", "mpi", "--variants", "skip")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = _convnet_rows(proc.stdout)
    assert {"layer-parallel skip, 1 rank", "layer-parallel skip, 2 ranks"} <= set(rows)
    assert "layer-parallel, 2 ranks" not in rows
    speedup = re.search(r"speed-up layer-parallel skip 2 ranks / 1 rank: ([\d.]+)", proc.stdout)
    assert speedup and float(speedup.group(1)) > 0


@pytest.mark.slow(seconds=15)
def test_time_preset_step(shared_data):
    proc = script("time_preset_step.py", "mnist_torchbraid", f"data_dir={shared_data}", "dataset.n_train=100",
                  "model.depth=8", "--repeats", "1")
    found = re.search(r"mnist_torchbraid .*: step ([\d.]+) s \(min of 1; first step incl\. compilation ([\d.]+) s\), "
                      r"batch 50", proc.stdout)
    assert found, proc.stdout
    assert 0 <= float(found.group(1)) <= float(found.group(2))


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize("layout", ["NHWC", "CNHW"])
def test_profile_gradient_sums_operations_by_kind(layout):
    """scripts/profile_gradient.py on a tiny conv2 net: the gradient's time, then operation kinds with times
    whose shares add up to at most 100 % and include the matrix products and the im2col concatenation."""
    proc = script("profile_gradient.py", "--depth", "8", "--width", "2", "--image", "6", "--batch", "2",
                  "--conv-layout", layout, "--repeats", "1", "--top", "50")
    assert re.search(rf"mgrit gradient, conv2, N = 8, width 2, batch 2, layout {layout}, threads one: [\d.]+ s",
                     proc.stdout), proc.stdout
    rows = re.findall(r"^  (\S+)\s+([\d.]+)\s+([\d.]+) %$", proc.stdout, re.M)
    assert rows and sum(float(share) for _, _, share in rows) <= 100.5, proc.stdout
    kinds = {name for name, _, _ in rows}
    assert any("concatenate" in k for k in kinds) and any("dot" in k or "ynn" in k for k in kinds), kinds


@pytest.mark.slow(seconds=20)
def test_bench_linesearch_prints_both_line_searches_and_their_ratios():
    """scripts/bench_linesearch.py on a tiny peaks_lpl: a row each for lpt's and optax's line search, and ratios
    that are the quotients of the printed figures (to their rounding; whatever the times are). The program with
    lpt's line search is the smaller (it holds one evaluation of the objective per trial, not two)."""
    proc = script("bench_linesearch.py", "peaks_lpl", "model.depth=8", "dataset.n_train=40", "dataset.n_val=10",
                  "--repeats", "1", "--rounds", "1")
    number = r"\s+([\d.]+)"
    rows = {name: [float(v) for v in re.search(rf"^{name}{number * 4}$", proc.stdout, re.M).groups()]
            for name in ("lpt", "optax")}
    ratios = [float(v) for v in re.search(rf"^lpt / optax{number * 4}$", proc.stdout, re.M).groups()]
    for (ours, theirs, ratio), digits in zip(zip(rows["lpt"], rows["optax"], ratios), (2, 2, 0, 1)):
        assert within_rounding(ratio, ours, theirs, digits=digits), (ours, theirs, ratio)
    assert rows["lpt"][2] < rows["optax"][2], proc.stdout  # HLO lines
