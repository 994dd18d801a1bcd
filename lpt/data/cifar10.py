"""CIFAR-10 (Krizhevsky, *Learning multiple layers of features from tiny images*, 2009), python version.

The archive ``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html unpacks to
``cifar-10-batches-py/`` with the pickled batches ``data_batch_1`` … ``data_batch_5`` (10000 training images
each) and ``test_batch`` (10000 test images). Each batch is a pickled dict with ``b"data"``, a uint8 array
``(n, 3072)`` whose rows hold the red, green and blue 32×32 planes in row-major order, and ``b"labels"``, a list
of n ints in 0..9. The pickles are read with a restricted unpickler that only builds numpy arrays, so a
foreign file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from lpt.data.common import DataError, Dataset, FloatName, check_dtype, check_int, make_dataset, resolve_data_dir

NAME = "cifar10"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version, cifar-10-python.tar.gz)"

_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals a CIFAR batch needs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def batch_folders(data_dir: str | os.PathLike[str] | None) -> tuple[Path, ...]:
    """Folders searched for the batches, in order: <d>/cifar10/cifar-10-batches-py, <d>/cifar-10-batches-py,
    <d>/cifar10, <d>."""
    root = resolve_data_dir(data_dir)
    return (root / NAME / BATCH_FOLDER, root / BATCH_FOLDER, root / NAME, root)


def _find_batch(data_dir: str | os.PathLike[str] | None, name: str) -> Path:
    folders = batch_folders(data_dir)
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{NAME}: data file {name!r} not found; searched {', '.join(map(str, folders))}. Obtain "
        f"cifar-10-python.tar.gz from {SOURCE}, unpack it into {folders[0].parent}, or point lpt at the folder "
        f"that holds it with data_dir=... (config key `data_dir`) or the environment variable LPT_DATA_DIR."
    )


def read_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads one pickled batch.

    Returns:
        uint8 images NHWC ``(n, 32, 32, 3)`` and int64 labels ``(n,)``.

    Raises:
        DataError: If the file cannot be unpickled, is not a dict with ``data`` and ``labels``, or has the wrong
            shapes, dtype or label range.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _NumpyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, TypeError,
            ValueError) as err:
        raise DataError(f"{NAME}: cannot read {path} as a pickled CIFAR-10 batch: {err}") from err
    if not isinstance(batch, dict):
        raise DataError(f"{NAME}: {path} holds a {type(batch).__name__}; expected a dict with data and labels")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{NAME}: {path} has keys {sorted(map(str, batch))}; expected 'data' and 'labels'")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    n_pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n_pixels:
        raise DataError(f"{NAME}: {path} has data of shape {data.shape} and dtype {data.dtype}; expected uint8 "
                        f"(n, {n_pixels})")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{NAME}: {path} has {labels.shape} labels of dtype {labels.dtype} for {data.shape[0]} "
                        f"images; expected one integer label per image")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{NAME}: {path} holds labels in {labels.min()}..{labels.max()}; expected 0..9")
    images = data.reshape(-1, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2]).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _read_split(data_dir, files: tuple[str, ...], n: int | None, option: str) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images and labels of the batches ``files`` (all if None; reads only what it needs)."""
    images, labels, count = [], [], 0
    for name in files:
        if n is not None and count >= n:
            break
        x, y = read_batch(_find_batch(data_dir, name))
        images.append(x)
        labels.append(y)
        count += len(y)
    if n is not None and n > count:
        raise DataError(f"{NAME}: invalid option {option}={n}; the batches {', '.join(files)} hold only {count} "
                        f"images")
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def load_cifar10(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    standardize: bool = False,
    dtype: FloatName = "float32",
) -> Dataset:
    """Loads CIFAR-10: the 50000 images of ``data_batch_1..5`` for training, the 10000 of ``test_batch`` for
    validation.

    Layout: images NHWC ``(n, 32, 32, 3)``, pixels divided by 255 (so in [0, 1]); with ``standardize`` each
    channel is then z-scored with the mean and standard deviation of the (selected) training images. Labels int32
    ``(n,)`` in 0..9. Subsets are the *first* ``n_train`` / ``n_val`` images in file order, so ``seed`` is
    unused.

    Args:
        data_dir: Data directory, see :func:`lpt.data.common.resolve_data_dir`; the batches are looked up in
            :func:`batch_folders`.
        seed: Unused (the loader is deterministic); accepted for a uniform interface.
        n_train: Number of training images, ``None`` for all 50000.
        n_val: Number of validation (test-batch) images, ``None`` for all 10000.
        standardize: Per-channel standardisation with training statistics.
        dtype: Feature dtype, ``"float32"`` or ``"float64"``.

    Returns:
        A classification :class:`Dataset` with ``num_outputs=10``.

    Raises:
        DataError: For invalid options, or missing or malformed batch files (the message names the file, the
            folders searched and where to get the data).
    """
    fdtype = check_dtype(NAME, dtype)
    if not isinstance(standardize, (bool, np.bool_)):
        raise DataError(f"{NAME}: invalid option standardize={standardize!r}; expected True or False")
    for option, value in (("n_train", n_train), ("n_val", n_val)):
        if value is not None:
            check_int(NAME, option, value)
    x_train, y_train = _read_split(data_dir, TRAIN_FILES, n_train, "n_train")
    x_val, y_val = _read_split(data_dir, (TEST_FILE,), n_val, "n_val")
    x_train = x_train.astype(fdtype) / fdtype.type(255)  # in place from here on: 50000 images are 600 MB
    x_val = x_val.astype(fdtype) / fdtype.type(255)
    if standardize and len(x_train):
        mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
        std = x_train.std(axis=(0, 1, 2), dtype=np.float64)
        std = np.where(std > 1e-12, std, 1.0)
        for x in (x_train, x_val):
            x -= mean.astype(fdtype)
            x /= std.astype(fdtype)
    return make_dataset(NAME, "classification", NUM_CLASSES, (x_train, y_train), (x_val, y_val), fdtype)
