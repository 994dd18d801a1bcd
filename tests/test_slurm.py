"""SLURM: the submitit launcher config, the sbatch script it generates, a local dry run, the array-job script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import lpt.cli  # noqa: F401  (registers the lpt.ranks resolver)

ROOT = Path(__file__).resolve().parents[1]
ARRAY_JOB = ROOT / "scripts" / "slurm" / "array_job.sh"

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="install the slurm extra: pip install '.[slurm]'")


def launcher_params(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="lpt.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    cfg.hydra.sweep.dir = "/tmp/sweep"  # ${now:...} needs a running Hydra app
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_composes_with_one_task_per_rank():
    params = launcher_params(["hydra/launcher=slurm", "parallel.data=2", "parallel.layers=4"])
    assert params["_target_"].endswith("SlurmLauncher")
    assert params["tasks_per_node"] == 8 and params["array_parallelism"] == 32


def test_sbatch_script_is_generated_without_submitting(tmp_path, monkeypatch):
    import submitit

    fake_bin = tmp_path / "bin"  # submitit looks for srun before building an executor; nothing is submitted
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = launcher_params(["hydra/launcher=slurm", "parallel.layers=4", "hydra.launcher.gpus_per_task=1",
                              "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"])
    # the same translation the launcher plugin makes before submitting
    params.pop("_target_")
    params.pop("submitit_folder")
    init = {"slurm_max_num_timeout": params.pop("max_num_timeout")}
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", **init)
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("lpt-train train.steps=1", "uid")
    for line in ("#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu",
                 "#SBATCH --time=30", "srun"):
        assert line in text, line


def test_local_executor_dry_run_of_a_sweep(tmp_path):
    exe = Path(sys.executable).with_name("lpt-train")
    proc = subprocess.run(
        [str(exe), "-m", "hydra/launcher=slurm_local", "seed=0,1", "train.steps=2", "dataset.n_train=100",
         "dataset.n_val=50", "model.depth=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = sorted((tmp_path / "sweep").glob("*/run.h5"))
    assert [p.parent.name for p in logs] == ["0", "1"]


def array_job(task: int, sweep: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "777", "LPT_DRY_RUN": "1"}
    return subprocess.run(["bash", str(ARRAY_JOB), str(sweep)], capture_output=True, text=True, env=env, timeout=30)


def test_array_job_maps_task_id_to_sweep_point():
    sweep = ROOT / "scripts" / "slurm" / "weak_scaling.txt"
    proc = array_job(2, sweep)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "srun", "--ntasks=4", "lpt-train", "+experiment=peaks", "solver=mgrit", "parallel=mpi", "parallel.layers=4",
        "model.depth=1024", "train.steps=100", "hydra.run.dir=runs/slurm/777/2"]


def test_array_job_rejects_a_task_beyond_the_sweep(tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# comment\n\nparallel.data=2 parallel.layers=3 seed=1\n")
    ok = array_job(0, sweep)
    assert ok.stdout.split()[:2] == ["srun", "--ntasks=6"]
    bad = array_job(1, sweep)
    assert bad.returncode == 2 and "no sweep point 1" in bad.stderr and "--array=0-0" in bad.stderr
