"""Data faults: truncated or corrupt files, wrong shapes, NaN/inf in the inputs → one clear DataError (exit 2 from
``lpt-train``), before anything is compiled. Every fault is made in a corrupted copy in a temporary folder."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from lpt.cli.compose import compose_config
from lpt.data import DataError
from lpt.data.peaks import load_peaks
from lpt.train import run

PEAKS = ["dataset.source=reference", "train.steps=1"]


@pytest.fixture
def peaks_files(tmp_path) -> Path:
    """Reference-format peaks files (5000 / 200 points, one-hot labels) written from the generator."""
    data = load_peaks(n_train=5000, n_val=200)
    folder = tmp_path / "peaks"
    folder.mkdir()
    for split, x, y in (("training", data.x_train, data.y_train), ("validation", data.x_val, data.y_val)):
        np.savetxt(folder / f"features_{split}.dat", x)
        np.savetxt(folder / f"labels_{split}.dat", np.eye(5)[y], fmt="%d")
    return tmp_path


def corrupt_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_inputs_are_refused_with_the_sample(peaks_files, value):
    corrupt_line(peaks_files / "peaks" / "features_training.dat", 17, f"0.5 {value}")
    with pytest.raises(DataError, match=r"peaks: the training features hold 1 non-finite values \(NaN or inf\), "
                                        r"the first in sample 17 \(counting from 0\)"):
        run(compose_config([*PEAKS, f"data_dir={peaks_files}"]), peaks_files / "run")
    assert not (peaks_files / "run" / "run.h5").exists()


def test_wrong_number_of_columns(peaks_files):
    corrupt_line(peaks_files / "peaks" / "features_validation.dat", 3, "0.5 0.5 0.5")
    with pytest.raises(DataError, match=r"features_validation.dat"):
        run(compose_config([*PEAKS, f"data_dir={peaks_files}"]), peaks_files / "run")


def test_garbage_text_and_truncated_table(peaks_files):
    path = peaks_files / "peaks" / "labels_training.dat"
    corrupt_line(path, 10, "0 1 zero 0 0")
    with pytest.raises(DataError, match=r"cannot parse .*labels_training.dat"):
        run(compose_config([*PEAKS, f"data_dir={peaks_files}"]), peaks_files / "run")
    path.write_text(path.read_text()[:5000])  # cut mid-file: fewer rows than the features
    with pytest.raises(DataError, match=r"labels_training.dat"):
        run(compose_config([*PEAKS, f"data_dir={peaks_files}"]), peaks_files / "run")


def test_lpt_train_reports_corrupt_data_in_one_line(peaks_files):
    corrupt_line(peaks_files / "peaks" / "features_training.dat", 0, "nan nan")
    exe = Path(sys.executable).with_name("lpt-train")
    proc = subprocess.run([str(exe), *PEAKS, f"data_dir={peaks_files}", f"hydra.run.dir={peaks_files / 'run'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "lpt-train: error: peaks: the training features hold 2 non-finite values" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the shared data sets (skipped, with the reason, where ../shared/data is absent) -------------------------

@pytest.fixture
def mnist_copy(tmp_path, shared_data) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in (shared_data / "mnist").glob("*.gz"):
        shutil.copy(f, folder / f.name)
    return tmp_path


MNIST = ["dataset=mnist", "model=conv", "train.steps=1"]


def _rewrite_idx(path: Path, edit) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(edit(raw)), compresslevel=1))


@pytest.mark.parametrize("fault, message", [
    ("truncated gzip", r"mnist: cannot read .*train-labels-idx1-ubyte.gz"),
    ("truncated payload", r"train-labels-idx1-ubyte.gz holds 59000 data bytes; its header \(60000,\) requires 60000"),
    ("wrong image size", r"t10k-images-idx3-ubyte.gz has sizes \(10000, 28, 27\)"),
    ("label out of range", r"holds label 200; expected 0..9"),
])
def test_mnist_faults(mnist_copy, fault, message):
    folder = mnist_copy / "mnist"
    labels, images = folder / "train-labels-idx1-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz"
    if fault == "truncated gzip":
        labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])
    elif fault == "truncated payload":
        _rewrite_idx(labels, lambda raw: raw[:-1000])
    elif fault == "wrong image size":
        _rewrite_idx(images, lambda raw: raw[:12] + struct.pack(">I", 27) + raw[16:])
    else:
        _rewrite_idx(labels, lambda raw: raw[:20] + bytes([200]) + raw[21:])
    with pytest.raises(DataError, match=message):
        run(compose_config([*MNIST, f"data_dir={mnist_copy}"]), mnist_copy / "run")


@pytest.fixture
def pines_copy(tmp_path, shared_data) -> Path:
    shutil.copytree(shared_data / "indian_pines", tmp_path / "indian_pines")
    return tmp_path


PINES = ["dataset=indian_pines", "dataset.n_train=200", "dataset.n_val=100", "train.steps=1"]


def test_indian_pines_truncated_file(pines_copy):
    cube = pines_copy / "indian_pines" / "Indian_pines_corrected.mat"
    cube.write_bytes(cube.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"indian_pines: cannot read MAT-file .*Indian_pines_corrected.mat"):
        run(compose_config([*PINES, f"data_dir={pines_copy}"]), pines_copy / "run")


def test_indian_pines_wrong_shape_and_nan(pines_copy):
    path = pines_copy / "indian_pines" / "Indian_pines_corrected.mat"
    cube = scipy.io.loadmat(path)["indian_pines_corrected"]
    scipy.io.savemat(path, {"indian_pines_corrected": cube[:, :, :199]})
    with pytest.raises(DataError, match=r"has shape \(145, 145, 199\); expected \(145, 145, 200\)"):
        run(compose_config([*PINES, f"data_dir={pines_copy}"]), pines_copy / "run")
    bad = cube.astype(np.float64)
    bad[np.unravel_index(np.arange(0, bad.size, 1000), bad.shape)] = np.nan
    scipy.io.savemat(path, {"indian_pines_corrected": bad})
    with pytest.raises(DataError, match=r"indian_pines: the training features hold \d+ non-finite values"):
        run(compose_config([*PINES, f"data_dir={pines_copy}"]), pines_copy / "run")
