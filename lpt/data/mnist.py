"""The MNIST handwritten digits (LeCun, Cortes, Burges), read from the four IDX files.

IDX format: a big-endian uint32 magic number (``0x0000 08 nd``: unsigned bytes, ``nd`` dimensions;
2051 for the image files, 2049 for the label files), ``nd`` big-endian uint32 sizes, then the data.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from lpt.data.common import (
    DataError,
    Dataset,
    FloatName,
    check_dtype,
    check_int,
    find_file,
    make_dataset,
)

NAME = "mnist"
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SOURCE = (
    "http://yann.lecun.com/exdb/mnist/ or a mirror such as "
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (with or without .gz)"
)


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{NAME}: cannot read {path}: {err}") from err


def read_idx(path: str | os.PathLike[str], magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Reads an unsigned-byte IDX file (optionally gzipped) and checks its header.

    Args:
        path: The file.
        magic: Expected magic number (2051 images, 2049 labels).
        item_shape: Expected sizes after the first (count) dimension, e.g. ``(28, 28)`` or ``()``.

    Returns:
        uint8 array ``(count, *item_shape)``.

    Raises:
        DataError: Wrong magic number or sizes, or data size different from the header's
            (e.g. a truncated file). The message names the file and what was expected.
    """
    path = Path(path)
    raw = _read_bytes(path)
    ndim = 1 + len(item_shape)
    header = 4 * (1 + ndim)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(
            f"{NAME}: {path} has magic number {found}; expected {magic} "
            f"(IDX unsigned-byte file with {ndim} dimension(s))"
        )
    if len(raw) < header:
        raise DataError(f"{NAME}: {path} is truncated: {len(raw)} bytes, shorter than its header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if dims[1:] != item_shape:
        raise DataError(f"{NAME}: {path} has sizes {dims}; expected (count, {item_shape})")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{NAME}: {path} holds {len(raw) - header} data bytes; its header {dims} requires "
            f"{expected} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(data_dir: str | os.PathLike[str] | None, name: str) -> Path:
    return find_file(data_dir, NAME, [name, name + ".gz"], source=_SOURCE)


def _load_split(
    data_dir: str | os.PathLike[str] | None, split: str, n: int | None, option: str
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (all if None) images (uint8, ``(n, 28, 28)``) and labels of one split."""
    images_name, labels_name = _SPLIT_FILES[split]
    images_path = _find_idx(data_dir, images_name)
    labels_path = _find_idx(data_dir, labels_name)
    images = read_idx(images_path, IMAGES_MAGIC, IMAGE_SHAPE)
    labels = read_idx(labels_path, LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise DataError(
            f"{NAME}: {images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; expected equal counts"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{NAME}: {labels_path} holds label {labels.max()}; expected 0..9")
    if n is not None and n > len(labels):
        raise DataError(
            f"{NAME}: invalid option {option}={n}; {images_path} holds only {len(labels)} images"
        )
    return images[:n], labels[:n]


def load_mnist(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    flatten: bool = False,
    dtype: FloatName = "float32",
) -> Dataset:
    """Loads MNIST: the 60000 training images for training, the 10000 test images for validation.

    Layout: images NHWC ``(n, 28, 28, 1)``, or ``(n, 784)`` (row-major) with ``flatten=True``;
    labels int32 ``(n,)`` in ``0..9``. Normalisation: pixels divided by 255, so in ``[0, 1]``.

    Files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each with or without ``.gz``, looked up in ``<data_dir>/mnist/`` and
    ``<data_dir>/``. Subsets are the *first* ``n_train`` / ``n_val`` images in file order (not
    random; the files' order is already mixed), so ``seed`` is unused.

    Args:
        data_dir: Data directory, see :func:`lpt.data.common.resolve_data_dir`.
        seed: Unused (the loader is deterministic); accepted for a uniform interface.
        n_train: Number of training images, ``None`` for all 60000.
        n_val: Number of validation (test-set) images, ``None`` for all 10000.
        flatten: Return ``(n, 784)`` vectors instead of ``(n, 28, 28, 1)`` images.
        dtype: Feature dtype, ``"float32"`` or ``"float64"``.

    Returns:
        A classification :class:`Dataset` with ``num_outputs=10``.

    Raises:
        DataError: For invalid options, or missing, truncated or malformed files.
    """
    fdtype = check_dtype(NAME, dtype)
    if not isinstance(flatten, (bool, np.bool_)):
        raise DataError(f"{NAME}: invalid option flatten={flatten!r}; expected True or False")
    sizes = {"n_train": n_train, "n_val": n_val}
    for option, value in sizes.items():
        if value is not None:
            check_int(NAME, option, value)
    item_shape = (int(np.prod(IMAGE_SHAPE)),) if flatten else (*IMAGE_SHAPE, 1)

    def prepare(split: str, option: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = _load_split(data_dir, split, sizes[option], option)
        pixels = images.reshape(len(images), *item_shape).astype(fdtype)
        pixels /= 255
        return pixels, labels

    train, val = prepare("train", "n_train"), prepare("test", "n_val")
    return make_dataset(NAME, "classification", NUM_CLASSES, train, val, fdtype)
