"""Tests of lpt.data against the public data files in ../shared/data (see its SOURCES.md)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from lpt.data import (
    DataError,
    Dataset,
    load_dataset,
    load_indian_pines,
    load_mnist,
    load_peaks,
    load_regression_peaks,
    load_regression_pendulum,
    resolve_data_dir,
)
from lpt.data.common import find_file, stratified_split
from lpt.data.peaks import peaks_labels, peaks_range
from lpt.data.regression import pendulum_rhs

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Ground truth of Indian_pines_gt.mat, classes 1..16 (counted from the file).
INDIAN_PINES_COUNTS = [
    46, 1428, 830, 237, 483, 730, 28, 478, 20, 972, 2455, 593, 205, 1265, 386, 93
]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def shared(*parts: str) -> Path:
    """Path under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} is missing")
    return path


def peaks_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The peaks function, written out independently of lpt.data.peaks."""
    return (
        3 * (1 - x) ** 2 * np.exp(-(x**2) - (y + 1) ** 2)
        - 10 * (x / 5 - x**3 - y**5) * np.exp(-(x**2) - y**2)
        - np.exp(-((x + 1) ** 2) - y**2) / 3
    )


def assert_conventions(d: Dataset) -> None:
    """Package conventions: numpy, C-contiguous, dtypes, matching lengths, label ranges."""
    for a in (d.x_train, d.y_train, d.x_val, d.y_val):
        assert type(a) is np.ndarray and a.flags.c_contiguous
        assert np.isfinite(a).all()
    assert len(d.x_train) == len(d.y_train) and len(d.x_val) == len(d.y_val)
    assert d.x_train.shape[1:] == d.x_val.shape[1:]
    if d.task == "classification":
        assert d.y_train.dtype == d.y_val.dtype == np.int32
        assert d.y_train.ndim == 1
        assert 0 <= d.y_train.min() and max(d.y_train.max(), d.y_val.max()) < d.num_outputs
    else:
        assert d.task == "regression"
        assert d.y_train.shape[1:] == d.y_val.shape[1:] == (d.num_outputs,)
        assert d.y_train.dtype == d.x_train.dtype


# ------------------------------------------------------------------------------------------------
# Data directory and file lookup
# ------------------------------------------------------------------------------------------------


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LPT_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("LPT_DATA_DIR")
    assert resolve_data_dir(None) == tmp_path / "xdg" / "lpt" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir(None) == Path.home() / ".cache" / "lpt" / "data"


def test_find_file_in_dataset_folder_and_directly(tmp_path):
    (tmp_path / "mnist").mkdir()
    nested = tmp_path / "mnist" / "a.gz"
    nested.write_bytes(b"")
    assert find_file(tmp_path, "mnist", ["a", "a.gz"], source="x") == nested
    assert find_file(tmp_path / "mnist", "mnist", ["a", "a.gz"], source="x") == nested
    (tmp_path / "a").write_bytes(b"")  # the first accepted name wins
    assert find_file(tmp_path, "mnist", ["a", "a.gz"], source="x") == tmp_path / "a"


def test_env_var_locates_data(monkeypatch):
    monkeypatch.setenv("LPT_DATA_DIR", str(shared("peaks")))
    assert len(load_peaks(source="reference").x_train) == 5000


@pytest.mark.parametrize(
    ("name", "options", "file", "hint"),
    [
        ("mnist", {}, "train-images-idx3-ubyte", "ossci-datasets.s3.amazonaws.com/mnist"),
        ("indian_pines", {}, "Indian_pines_gt.mat", "ehu.eus"),
        ("peaks", {"source": "reference"}, "features_training.dat", "LayerParallelLearning"),
    ],
)
def test_missing_file_message(tmp_path, name, options, file, hint):
    with pytest.raises(DataError) as err:
        load_dataset(name, data_dir=tmp_path, **options)
    msg = str(err.value)
    for part in (file, str(tmp_path / name), str(tmp_path) + ".", hint, "data_dir", "LPT_DATA_DIR"):
        assert part in msg


def test_missing_uncorrected_indian_pines():
    with pytest.raises(DataError, match=r"Indian_pines\.mat.*ehu\.eus.*10\.4231/R7RX991C"):
        load_indian_pines(data_dir=shared("indian_pines"), variant="uncorrected")


# ------------------------------------------------------------------------------------------------
# Options and dispatch
# ------------------------------------------------------------------------------------------------


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"'cifar'.*peaks, indian_pines, mnist"):
        load_dataset("cifar")


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("peaks", {"n_train": -1}, r"n_train=-1.*integer >= 5"),
        ("peaks", {"n_train": 12}, r"n_train=12.*multiple of 5"),
        ("peaks", {"source": "file"}, r"source='file'.*'generate', 'reference'"),
        ("peaks", {"n_tran": 10}, r"unknown option.*n_tran.*valid options: source, n_train"),
        ("indian_pines", {"variant": "foo"}, r"variant='foo'.*'corrected', 'uncorrected'"),
        ("mnist", {"n_val": 0}, r"n_val=0.*integer >= 1"),
        ("mnist", {"flatten": "yes"}, r"flatten='yes'"),
        ("regression_peaks", {"n_train": True}, r"n_train=True"),
        ("regression_peaks", {"dtype": "float16"}, r"dtype='float16'.*'float32', 'float64'"),
        ("regression_pendulum", {"dt": 0.0}, r"dt=0\.0.*> 0"),
        ("regression_pendulum", {"damping": -0.1}, r"damping=-0\.1.*>= 0"),
    ],
)
def test_invalid_options(tmp_path, name, options, pattern):
    # checked before any file is read: the empty data_dir must not matter
    with pytest.raises(DataError, match=pattern):
        load_dataset(name, data_dir=tmp_path, **options)


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("indian_pines", {"n_train": 9000, "n_val": 2000}, r"n_train=9000, n_val=2000.*10249"),
        ("mnist", {"n_train": 60001}, r"n_train=60001.*only 60000"),
    ],
)
def test_sizes_beyond_the_data(name, options, pattern):
    with pytest.raises(DataError, match=pattern):
        load_dataset(name, data_dir=shared(name), **options)


@pytest.mark.parametrize("name", ["peaks", "regression_peaks", "regression_pendulum"])
def test_invalid_seed(name):
    with pytest.raises(DataError, match=r"seed=-1.*integer >= 0"):
        load_dataset(name, seed=-1)


@pytest.mark.parametrize(
    ("name", "options", "x_shape", "y_shape", "outputs"),
    [
        ("peaks", {"n_train": 50, "n_val": 10}, (50, 2), (50,), 5),
        ("regression_peaks", {"n_train": 50, "n_val": 10}, (50, 2), (50, 1), 1),
        ("regression_pendulum", {"n_train": 50, "n_val": 10}, (50, 2), (50, 2), 2),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generated_conventions(tmp_path, name, options, x_shape, y_shape, outputs, dtype):
    d = load_dataset(name, data_dir=tmp_path, seed=3, dtype=dtype, **options)
    assert_conventions(d)
    assert (d.name, d.num_outputs) == (name, outputs)
    assert d.x_train.shape == x_shape and d.y_train.shape == y_shape and len(d.x_val) == 10
    assert d.x_train.dtype == np.dtype(dtype)


# ------------------------------------------------------------------------------------------------
# peaks
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peaks_generated() -> Dataset:
    return load_peaks(seed=0)


@pytest.fixture(scope="module")
def peaks_reference() -> Dataset:
    return load_peaks(data_dir=shared(), source="reference")


def test_peaks_range():
    lo, hi = peaks_range()
    assert lo == pytest.approx(-6.5511, abs=1e-3) and hi == pytest.approx(8.1060, abs=1e-3)


def test_peaks_generated_balanced(peaks_generated):
    d = peaks_generated
    assert_conventions(d)
    assert d.x_train.shape == (5000, 2) and d.x_val.shape == (200, 2)
    assert np.bincount(d.y_train).tolist() == [1000] * 5
    assert np.bincount(d.y_val).tolist() == [40] * 5
    assert np.abs(d.x_train).max() <= 3 and np.abs(d.x_val).max() <= 3
    assert not set(map(tuple, d.x_train.tolist())) & set(map(tuple, d.x_val.tolist()))
    assert not (np.diff(d.y_train) >= 0).all()  # shuffled, not sorted by class


def test_peaks_generated_labels_are_bins_of_z(peaks_generated):
    lo, hi = -6.551129953, 8.106039280  # extrema of z on the 1001 x 1001 grid
    for x, y in ((peaks_generated.x_train, peaks_generated.y_train),
                 (peaks_generated.x_val, peaks_generated.y_val)):
        z = peaks_z(x[:, 0].astype(np.float64), x[:, 1].astype(np.float64))
        expected = np.clip(np.floor((z - lo) / (hi - lo) * 5), 0, 4)
        np.testing.assert_array_equal(y, expected)


def test_peaks_generated_seeded(peaks_generated):
    again = load_peaks(seed=0)
    other = load_peaks(seed=1)
    for a, b in zip(peaks_generated[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(peaks_generated.x_train, other.x_train)


def test_peaks_reference_files(peaks_reference):
    d = peaks_reference
    assert_conventions(d)
    assert d.x_train.shape == (5000, 2) and d.x_val.shape == (200, 2)
    assert np.bincount(d.y_train).tolist() == [1000] * 5
    assert np.bincount(d.y_val).tolist() == [40] * 5
    # The points lie on the 256 x 256 grid of spacing 6/255 in [-3, 3]^2 (SOURCES.md says 6/85).
    grid = (d.x_train.astype(np.float64) + 3) * 255 / 6
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)


def test_peaks_labelling_rule_matches_reference(peaks_reference):
    """Our bin function reproduces the reference labels: 99.94 % (training), 100 % (validation).

    The 3 training points that differ have z within 1e-3 of the bin edge z = -0.688; the reference
    code located the extrema of z slightly differently.
    """
    d = peaks_reference
    train_ok = peaks_labels(d.x_train) == d.y_train
    assert train_ok.mean() >= 0.999
    assert (peaks_labels(d.x_val) == d.y_val).all()
    lo, hi = peaks_range()
    edges = lo + (hi - lo) * np.arange(1, 5) / 5
    z_bad = peaks_z(*d.x_train[~train_ok].astype(np.float64).T)
    assert np.abs(z_bad[:, None] - edges).min(axis=1).max() < 1e-3


def test_peaks_reference_subset_rejected():
    with pytest.raises(DataError, match=r"n_train=100.*holds 5000"):
        load_peaks(data_dir=shared("peaks"), source="reference", n_train=100)


def _write_reference(folder: Path, features: str, labels: str) -> None:
    for split in ("training", "validation"):
        (folder / f"features_{split}.dat").write_text(features)
        (folder / f"labels_{split}.dat").write_text(labels)


@pytest.mark.parametrize(
    ("features", "labels", "pattern"),
    [
        ("0 0 0\n", "1 0 0 0 0\n", r"features_training\.dat has shape \(1, 3\); expected 2 col"),
        ("0 0\n", "1 0 0 0\n", r"labels_training\.dat has shape \(1, 4\); expected 5 columns"),
        ("0 0\n1 1\n", "1 0 0 0 0\n", r"2 rows but .*labels_training\.dat has 1"),
        ("0 0\n", "1 1 0 0 0\n", r"labels_training\.dat row 1 .*expected one-hot"),
        ("0 x\n", "1 0 0 0 0\n", r"cannot parse .*features_training\.dat"),
    ],
)
def test_peaks_reference_malformed(tmp_path, features, labels, pattern):
    _write_reference(tmp_path, features, labels)
    with pytest.raises(DataError, match=pattern):
        load_peaks(data_dir=tmp_path, source="reference", n_train=5, n_val=5)


# ------------------------------------------------------------------------------------------------
# Indian Pines
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indian_pines() -> Dataset:
    return load_indian_pines(data_dir=shared(), seed=0)


def test_indian_pines_ground_truth_file():
    gt = scipy.io.loadmat(shared("indian_pines", "Indian_pines_gt.mat"))["indian_pines_gt"]
    assert gt.shape == (145, 145)
    counts = np.bincount(gt.ravel(), minlength=17)
    assert counts[1:].tolist() == INDIAN_PINES_COUNTS
    assert counts[1:].sum() == 10249 and counts[0] == 145 * 145 - 10249


def test_indian_pines_all_labelled_pixels():
    d = load_indian_pines(data_dir=shared("indian_pines"), n_train=10249 - 2000, n_val=2000)
    labels = np.concatenate([d.y_train, d.y_val])
    assert np.bincount(labels, minlength=16).tolist() == INDIAN_PINES_COUNTS
    spectra = np.concatenate([d.x_train, d.x_val])
    assert len(np.unique(spectra, axis=0)) == 10249  # every labelled pixel exactly once


def test_indian_pines_split(indian_pines):
    d = indian_pines
    assert_conventions(d)
    assert (d.task, d.num_outputs, d.name) == ("classification", 16, "indian_pines")
    assert d.x_train.shape == (4000, 200) and d.x_val.shape == (2000, 200)
    counts = np.array(INDIAN_PINES_COUNTS)
    for y, n in ((d.y_train, 4000), (d.y_val, 2000)):
        per_class = np.bincount(y, minlength=16)
        assert per_class.min() >= 1
        assert np.abs(per_class - n * counts / counts.sum()).max() < 1  # proportional
    train_rows = {row.tobytes() for row in d.x_train}
    assert not any(row.tobytes() in train_rows for row in d.x_val)  # disjoint pixels


def test_indian_pines_normalised_by_training_split(indian_pines):
    x = indian_pines.x_train.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-5)
    assert np.abs(indian_pines.x_val.mean(axis=0)).max() < 0.2  # same transform, not re-fitted
    assert not np.allclose(indian_pines.x_val.std(axis=0), 1, atol=1e-4)


def test_indian_pines_seeded(indian_pines):
    again = load_indian_pines(data_dir=shared(), seed=0)
    other = load_indian_pines(data_dir=shared(), seed=1)
    for a, b in zip(indian_pines[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(indian_pines.y_train, other.y_train)
    assert np.bincount(other.y_train).tolist() == np.bincount(indian_pines.y_train).tolist()


def test_indian_pines_wrong_variable(tmp_path):
    shutil.copy(shared("indian_pines", "Indian_pines_corrected.mat"), tmp_path)
    scipy.io.savemat(tmp_path / "Indian_pines_gt.mat", {"y": np.zeros((145, 145), np.uint8)})
    with pytest.raises(DataError, match=r"Indian_pines_gt\.mat has no variable 'indian_pines_gt'"):
        load_indian_pines(data_dir=tmp_path)
    scipy.io.savemat(tmp_path / "Indian_pines_gt.mat", {"indian_pines_gt": np.ones((145, 144))})
    with pytest.raises(DataError, match=r"Indian_pines_gt\.mat has shape \(145, 144\)"):
        load_indian_pines(data_dir=tmp_path)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    frac_train=st.floats(0, 1),
    frac_val=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_properties(counts, frac_train, frac_val, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    total = len(labels)
    n_train = round(frac_train * total)
    n_val = round(frac_val * (total - n_train))
    tr, va = stratified_split(labels, n_train, n_val, np.random.default_rng(seed))
    assert len(tr) == n_train and len(va) == n_val
    assert len(np.union1d(tr, va)) == n_train + n_val  # disjoint, no repeats
    k = len(counts)
    ctr = np.bincount(labels[tr], minlength=k)
    cva = np.bincount(labels[va], minlength=k)
    if n_train >= k:
        assert ctr.min() >= 1
    if n_val >= k:
        assert (cva >= 1)[np.array(counts) >= 2].all()


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_mnist(data_dir=shared())


def test_mnist_full(mnist):
    d = mnist
    assert_conventions(d)
    assert (d.task, d.num_outputs) == ("classification", 10)
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_val.shape == (10000, 28, 28, 1)
    assert d.x_train.dtype == np.float32
    assert d.x_train.min() == 0 and d.x_train.max() == 1 and d.x_val.max() == 1
    assert np.bincount(d.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(d.y_val).tolist() == MNIST_TEST_COUNTS
    assert d.y_train[:5].tolist() == [5, 0, 4, 1, 9] and d.y_val[:5].tolist() == [7, 2, 1, 0, 4]
    # pixels are k / 255
    k = d.x_val * 255
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)


def test_mnist_subset_and_flatten(mnist):
    d = load_mnist(data_dir=shared("mnist"), n_train=100, n_val=30, flatten=True)
    assert d.x_train.shape == (100, 784) and d.x_val.shape == (30, 784)
    np.testing.assert_array_equal(d.x_train, mnist.x_train[:100].reshape(100, 784))
    np.testing.assert_array_equal(d.y_val, mnist.y_val[:30])


def _idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + data


def _write_mnist(folder: Path, n_train: int = 6, n_test: int = 4) -> np.ndarray:
    """Small uncompressed IDX files; returns the training images (uint8)."""
    rng = np.random.default_rng(0)
    images = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images[prefix] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            _idx(2051, (n, 28, 28), images[prefix].tobytes())
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(2049, (n,), labels.tobytes()))
    return images["train"]


def test_mnist_uncompressed_synthetic(tmp_path):
    images = _write_mnist(tmp_path)
    d = load_mnist(data_dir=tmp_path)
    np.testing.assert_array_equal(d.x_train[..., 0] * 255, images)
    assert d.y_train.tolist() == [0, 1, 2, 3, 4, 5] and d.x_val.shape == (4, 28, 28, 1)


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


@pytest.mark.parametrize(
    ("file", "content", "pattern"),
    [
        (IMAGES, _idx(2049, (6, 28, 28), bytes(6 * 784)), r"magic number 2049; expected 2051"),
        (TEST_LABELS, _idx(2051, (4,), bytes(4)), r"magic number 2051; expected 2049"),
        (IMAGES, _idx(2051, (6, 28, 28), bytes(5 * 784)), r"holds 3920 data bytes.*requires 4704"),
        (IMAGES, _idx(2051, (6, 28, 27), bytes(6 * 756)), r"sizes \(6, 28, 27\)"),
        (LABELS, _idx(2049, (5,), bytes(5)), r"6 images but .* 5 labels"),
        (TEST_LABELS, _idx(2049, (4,), bytes([0, 1, 2, 10])), r"label 10; expected 0\.\.9"),
        (TEST_LABELS, b"\x00\x00", r"magic number None"),
    ],
)
def test_mnist_corrupt_synthetic(tmp_path, file, content, pattern):
    _write_mnist(tmp_path)
    (tmp_path / file).write_bytes(content)
    with pytest.raises(DataError, match=pattern) as err:
        load_mnist(data_dir=tmp_path)
    assert file in str(err.value)


def test_mnist_corrupt_real_files(tmp_path):
    """Truncated and re-labelled copies of the real test-set files."""
    for name in MNIST_FILES:
        shutil.copy(shared("mnist", name + ".gz"), tmp_path)
    images_gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images_gz.read_bytes())
    images_gz.write_bytes(gzip.compress(raw[:-100], compresslevel=1))  # truncated IDX
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz holds 7839900 data bytes"):
        load_mnist(data_dir=tmp_path, n_train=10)
    images_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:], compresslevel=1))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz has magic number 2049"):
        load_mnist(data_dir=tmp_path, n_train=10)
    images_gz.write_bytes(images_gz.read_bytes()[:5000])  # truncated gzip stream
    with pytest.raises(DataError, match=r"cannot read .*t10k-images-idx3-ubyte\.gz"):
        load_mnist(data_dir=tmp_path, n_train=10)


# ------------------------------------------------------------------------------------------------
# Regression tasks
# ------------------------------------------------------------------------------------------------


def test_regression_peaks_targets():
    d = load_regression_peaks(seed=0)
    assert_conventions(d)
    assert d.x_train.shape == (5000, 2) and d.y_train.shape == (5000, 1)
    assert d.x_val.shape == (500, 2) and d.y_val.shape == (500, 1)
    assert np.abs(d.x_train).max() <= 3
    y = d.y_train[:, 0].astype(np.float64)
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-5
    # Targets are an increasing affine function of z: fit on training, check both splits exactly.
    z_train = peaks_z(*d.x_train.astype(np.float64).T)
    slope, offset = np.polyfit(z_train, y, 1)
    assert slope > 0
    z_val = peaks_z(*d.x_val.astype(np.float64).T)
    np.testing.assert_allclose(slope * z_val + offset, d.y_val[:, 0], atol=1e-5)
    np.testing.assert_allclose(slope * z_train + offset, y, atol=1e-5)
    assert not np.array_equal(load_regression_peaks(seed=1).x_train, d.x_train)


def _energy(s: np.ndarray, g_over_l: float = 1.0) -> np.ndarray:
    return 0.5 * s[:, 1] ** 2 + g_over_l * (1 - np.cos(s[:, 0]))


def test_pendulum_matches_solve_ivp():
    options = {"dt": 0.7, "damping": 0.3, "g_over_l": 2.0}
    d = load_regression_pendulum(seed=5, n_train=200, n_val=20, dtype="float64", **options)
    assert_conventions(d)
    assert d.y_train.shape == (200, 2)
    for s0, s1 in zip(d.x_val[:5], d.y_val[:5]):
        sol = scipy.integrate.solve_ivp(
            lambda t, s: pendulum_rhs(s, options["g_over_l"], options["damping"]),
            (0.0, options["dt"]), s0, method="DOP853", rtol=1e-11, atol=1e-12,
        )
        np.testing.assert_allclose(sol.y[:, -1], s1, atol=1e-8)


def test_pendulum_dataset():
    d = load_regression_pendulum(seed=0)
    assert_conventions(d)
    assert (d.task, d.num_outputs) == ("regression", 2)
    assert d.x_train.shape == d.y_train.shape == (5000, 2)
    assert d.x_val.shape == d.y_val.shape == (500, 2)
    # damping 0.1 dissipates energy, E' = -c ω^2 <= 0, so no state exceeds the largest initial
    # energy max(ω0^2 / 2 + 1 - cos θ0) = 4
    e0, e1 = _energy(d.x_train.astype(np.float64)), _energy(d.y_train.astype(np.float64))
    assert e0.max() <= 4 + 1e-5
    assert (e1 <= e0 + 1e-6).all() and (e1 < e0).mean() > 0.99
    # pairs chain: most targets are inputs of another sample of the same trajectory
    inputs = {row.tobytes() for row in d.x_train}
    assert np.mean([row.tobytes() in inputs for row in d.y_train]) > 0.5
    again = load_regression_pendulum(seed=0)
    np.testing.assert_array_equal(again.y_val, d.y_val)


def test_pendulum_conserves_energy_without_damping():
    d = load_regression_pendulum(seed=2, n_train=500, n_val=10, damping=0.0, dtype="float64")
    e0, e1 = _energy(d.x_train), _energy(d.y_train)
    np.testing.assert_allclose(e1, e0, atol=1e-8)
