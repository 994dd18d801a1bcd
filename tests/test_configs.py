"""Every config composes, every experiment preset runs a few steps, bad input gives clear errors."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.logging import read_run
from lpt.train import ConfigError, run
from conftest import on_worker_core

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ["dataset", "model", "solver", "optimizer", "parallel", "logging"]
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
NEEDS_FILES = {"indian_pines", "mnist"}

# tiny budgets for each data set (the preset's architecture is kept)
TINY = {
    "peaks": ["dataset.n_train=100", "dataset.n_val=50"],
    "indian_pines": ["dataset.n_train=200", "dataset.n_val=100"],
    "mnist": ["dataset.n_train=64", "dataset.n_val=16"],
    "regression_peaks": ["dataset.n_train=100", "dataset.n_val=50"],
    "regression_pendulum": ["dataset.n_train=100", "dataset.n_val=50"],
    # per preset, replacing the data set's budget and the batch of 8. The deep presets run every option of theirs
    # but at depth 32 (still 3 MGRIT levels: 32 → 8 → 2 with cfactor 4, 32 → 16 → 8 with cfactor 2 and
    # min_coarse 10): compiling 4096 conv layers, or full-batch L-BFGS through 512 layers of width 200, took
    # 60-100 s here and tests nothing the shallower run does not (padding and many levels have their own tests;
    # the full depths are built by scripts/bench_memory.py and scripts/time_preset_step.py, whose figures the
    # README gives). Compilation time grows with the number of levels and the depth: regression_2048 at its full
    # depth (6 levels) compiled 60 % longer than at depth 64.
    "mnist_4096": ["dataset.n_train=8", "dataset.n_val=8", "train.batch_size=2", "model.depth=32"],
    # indian_pines_512 keeps 4 of its 20 L-BFGS pairs: 20 pairs of 32 layers of width 200 are a 200 MB state that
    # took 2 of this test's 9 s to write at the end of the run (the line search is the same)
    "indian_pines_512": ["dataset.n_train=32", "dataset.n_val=16", "model.depth=32", "optimizer.memory_size=4"],
    "regression_2048": ["dataset.n_train=100", "dataset.n_val=50", "model.depth=32"],
    # peaks_1024 is peaks_lpl but for its depth (tests/test_presets_papers.py), so at peaks_lpl's depth (32: still
    # 3 levels) and budget it is the same program, loaded from the session's compilation cache, not compiled again
    "peaks_1024": ["dataset.n_train=100", "dataset.n_val=50", "model.depth=32"],
}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_config_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg[group] is not None
    for key in ("seed", "data_dir", "resume"):
        assert key in cfg


def test_config_names_of_design_section_6():
    cfg = compose_config(["solver=mgrit"]) if "mgrit" in group_options("solver") else compose_config([])
    for dotted in ["model.depth", "model.width", "model.T", "model.activation", "model.layer", "optimizer.lr",
                   "train.steps", "train.batch_size", "train.eval_every", "parallel.data", "parallel.layers"]:
        node = cfg
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]


@pytest.mark.slow(seconds=20)  # 13 presets, 5-55 s each (250 s in all here)
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_runs(name, tmp_path, shared_data):
    cfg = compose_config([f"+experiment={name}"])
    dataset = cfg["dataset"]["name"]
    if dataset not in TINY:
        pytest.skip(f"preset {name} uses data set {dataset}, tested in its own module")
    batch = [] if cfg["train"]["batch_size"] is None or name in TINY else ["train.batch_size=8"]
    cfg = compose_config([f"+experiment={name}", *TINY.get(name, TINY[dataset]), *batch, "train.steps=3",
                          "train.eval_every=2",
                          f"data_dir={shared_data}"])
    result = run(cfg, tmp_path)
    h = read_run(result.log_path).history
    np.testing.assert_array_equal(h["step"], [1, 2, 3])
    assert np.all(np.isfinite(h["loss"]))


def lpt_train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed console script from an arbitrary working directory."""
    exe = Path(sys.executable).with_name("lpt-train")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(on_worker_core([str(exe), *args]), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.activation=swish"], "model.activation='swish' is not valid; choose one of"),
        (["model.depth=0"], "model.depth=0 must be an integer ≥ 1"),
        (["model.T=-1"], "model.T=-1 must be a positive finite number"),
        (["train.batch_size=100000"], "train.batch_size=100000 exceeds the 5000 training samples"),
        (["optimizer.lr=0"], "optimizer.lr=0 must be a positive finite number"),
        (["dtype=float16"], "dtype='float16' is not valid"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = lpt_train([*args, "train.steps=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_file_names_file_and_folder(tmp_path):
    proc = lpt_train(["dataset=mnist", "model=conv", f"data_dir={tmp_path}", "train.steps=1"], tmp_path)
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_idx_header_is_a_clear_error(tmp_path, shared_data):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in (shared_data / "mnist").glob("*.gz"):
        shutil.copy(f, folder / f.name)
    raw = bytearray(gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[2:4] = b"\x09\x09"  # break the magic number
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    with pytest.raises(Exception, match="t10k-images-idx3-ubyte") as info:
        run(compose_config(["dataset=mnist", "model=conv", f"data_dir={tmp_path}", "train.steps=1"]), tmp_path)
    assert "magic" in str(info.value).lower()


def test_unknown_parallel_grid_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"parallel.data × parallel.layers must be 1 × 1"):
        run(compose_config(["parallel.layers=2", "train.steps=1"]), tmp_path)
