"""Shared pieces of the data loaders: the `Dataset` type, errors, option checks, file lookup.

Every loader in :mod:`lpt.data` returns a :class:`Dataset` of C-contiguous numpy arrays and raises
:class:`DataError` for anything the caller can fix (a missing or corrupt file, an invalid option).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

Task = Literal["classification", "regression"]
FloatName = Literal["float32", "float64"]

DATA_DIR_ENV = "LPT_DATA_DIR"
"""Environment variable that names the data directory when no ``data_dir`` is given."""

_FLOAT_DTYPES = ("float32", "float64")


class DataError(ValueError):
    """A data set cannot be loaded: missing or malformed file, or an invalid option."""


class Dataset(NamedTuple):
    """A training/validation split of one data set.

    Attributes:
        x_train: Training features, float32 (or float64 on request). Vectors are ``(n, d)``,
            images NHWC ``(n, height, width, channels)``.
        y_train: Training labels: int32 class indices ``(n,)`` for classification, float targets
            ``(n, num_outputs)`` (same dtype as the features) for regression.
        x_val: Validation features, same layout as ``x_train``.
        y_val: Validation labels, same layout as ``y_train``.
        task: ``"classification"`` or ``"regression"``.
        num_outputs: Number of classes, or the regression output dimension.
        name: Name of the data set as given to :func:`lpt.data.load_dataset`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: Task
    num_outputs: int
    name: str


# --------------------------------------------------------------------------------------------
# Option checks. Each raises DataError naming the data set, the option, the value and what is valid.
# --------------------------------------------------------------------------------------------


def _invalid(dataset: str, option: str, value: object, expected: str) -> DataError:
    return DataError(f"{dataset}: invalid option {option}={value!r}; expected {expected}")


def check_int(dataset: str, option: str, value: object, *, minimum: int = 1) -> int:
    """Returns ``value`` as an int if it is an integer (not a bool) ``>= minimum``.

    Raises:
        DataError: If ``value`` is not such an integer.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _invalid(dataset, option, value, f"an integer >= {minimum}")
    return int(value)


def check_float(dataset: str, option: str, value: object, *, positive: bool) -> float:
    """Returns ``value`` as a float if it is a finite real ``> 0`` (``positive``) or ``>= 0``.

    Raises:
        DataError: If ``value`` is not such a number.
    """
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and np.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        raise _invalid(dataset, option, value, "a finite number " + ("> 0" if positive else ">= 0"))
    return float(value)  # type: ignore[arg-type]


def check_choice(dataset: str, option: str, value: object, choices: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``choices``.

    Raises:
        DataError: If it is not.
    """
    if not isinstance(value, str) or value not in choices:
        raise _invalid(dataset, option, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_dtype(dataset: str, dtype: object) -> np.dtype:
    """Returns the float dtype named by ``dtype`` (``"float32"`` or ``"float64"``, or those dtypes).

    Raises:
        DataError: For any other value.
    """
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name not in _FLOAT_DTYPES:
        raise _invalid(dataset, "dtype", dtype, "one of " + ", ".join(map(repr, _FLOAT_DTYPES)))
    return np.dtype(name)


def make_rng(dataset: str, seed: object) -> np.random.Generator:
    """Returns ``numpy.random.default_rng(seed)``, checking that ``seed`` is an int ``>= 0``."""
    return np.random.default_rng(check_int(dataset, "seed", seed, minimum=0))


# --------------------------------------------------------------------------------------------
# Data directory and file lookup.
# --------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns the data directory.

    The first of: the explicit ``data_dir``; the environment variable ``LPT_DATA_DIR``;
    ``$XDG_CACHE_HOME/lpt/data`` (``~/.cache/lpt/data`` when ``XDG_CACHE_HOME`` is unset).
    The folder need not exist; ``~`` is expanded.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "lpt" / "data"


def find_file(
    data_dir: str | os.PathLike[str] | None,
    dataset: str,
    names: Sequence[str],
    *,
    source: str,
) -> Path:
    """Finds a data file under ``<data_dir>/<dataset>/`` or directly in ``<data_dir>/``.

    Args:
        data_dir: Data directory, resolved with :func:`resolve_data_dir`.
        dataset: Subfolder of the data set (e.g. ``"mnist"``).
        names: Accepted file names, in order of preference (e.g. ``("x", "x.gz")``).
        source: Where to obtain the file, quoted in the error message.

    Returns:
        The path of the first existing file, trying each folder for each name in turn.

    Raises:
        DataError: If none exists. The message names the file, the folders searched, where to get
            the data and how to point lpt at it.
    """
    root = resolve_data_dir(data_dir)
    folders = (root / dataset, root)
    for name in names:
        for folder in folders:
            path = folder / name
            if path.is_file():
                return path
    wanted = " or ".join(repr(n) for n in names)
    searched = ", ".join(str(f) for f in folders)
    raise DataError(
        f"{dataset}: data file {wanted} not found; searched {searched}. "
        f"Obtain it from {source}, put it in {folders[0]}, or point lpt at the folder that "
        f"holds it with data_dir=... (config key `data_dir`) or the environment variable "
        f"{DATA_DIR_ENV}."
    )


# --------------------------------------------------------------------------------------------
# Array helpers shared by the loaders.
# --------------------------------------------------------------------------------------------


def standardize(
    train: np.ndarray, val: np.ndarray, *, eps: float = 1e-12
) -> tuple[np.ndarray, np.ndarray]:
    """Z-scores both arrays per column with the mean and std of ``train`` (axis 0).

    Columns with std ``<= eps`` are only centred. Computed in float64.
    """
    train = np.asarray(train, dtype=np.float64)
    val = np.asarray(val, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > eps, std, 1.0)
    return (train - mean) / std, (val - mean) / std


def _apportion(
    total: int, ideal: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Integers ``lower <= a <= upper`` with ``sum(a) == total``, each as close to ``ideal`` as the
    bounds allow (largest-remainder rounding). Requires ``sum(lower) <= total <= sum(upper)``."""
    alloc = np.clip(np.floor(ideal), lower, upper).astype(np.int64)
    while alloc.sum() > total:
        k = np.argmax(np.where(alloc > lower, alloc - ideal, -np.inf))
        alloc[k] -= 1
    while alloc.sum() < total:
        k = np.argmax(np.where(alloc < upper, ideal - alloc, -np.inf))
        alloc[k] += 1
    return alloc


def stratified_split(
    labels: np.ndarray, n_train: int, n_val: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of sample indices into disjoint training and validation sets.

    Class ``k`` with ``c_k`` of ``N`` samples gets about ``n_train * c_k / N`` training and
    ``n_val * c_k / N`` validation samples (largest-remainder rounding, exact totals). Every class
    gets at least one sample in a split when that split has at least one sample per class to give
    (and, for validation, the class has a sample left after training).

    Args:
        labels: Integer class labels ``(N,)``.
        n_train: Number of training samples.
        n_val: Number of validation samples; ``n_train + n_val <= N``.
        rng: Random generator; picks the samples within each class and the order of each split.

    Returns:
        ``(train_idx, val_idx)``, int64 index arrays into ``labels``, each in random order.
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    total = counts.sum()
    if n_train + n_val > total:
        raise DataError(f"n_train + n_val = {n_train + n_val} exceeds the {total} samples")
    k = len(classes)
    lower_val = ((n_val >= k) & (counts >= 2)).astype(np.int64)
    lower_train = np.full(k, int(n_train >= k), dtype=np.int64)
    n_tr = _apportion(n_train, n_train * counts / total, lower_train, counts - lower_val)
    n_va = _apportion(n_val, n_val * counts / total, lower_val, counts - n_tr)
    train_parts, val_parts = [], []
    for c in range(k):
        members = rng.permutation(np.flatnonzero(inverse == c))
        train_parts.append(members[: n_tr[c]])
        val_parts.append(members[n_tr[c] : n_tr[c] + n_va[c]])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(val_parts))


def make_dataset(
    name: str,
    task: Task,
    num_outputs: int,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    dtype: np.dtype,
) -> Dataset:
    """Builds a :class:`Dataset` with the package's array conventions.

    Features are cast to ``dtype``; labels to int32 (classification) or targets to ``dtype``
    (regression). All arrays are returned C-contiguous.
    """
    y_dtype = np.int32 if task == "classification" else dtype

    def cast(a: np.ndarray, dt: np.dtype | type) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=dt)

    return Dataset(
        x_train=cast(train[0], dtype),
        y_train=cast(train[1], y_dtype),
        x_val=cast(val[0], dtype),
        y_val=cast(val[1], y_dtype),
        task=task,
        num_outputs=int(num_outputs),
        name=name,
    )
