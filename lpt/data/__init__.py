"""Data sets of lpt: peaks, Indian Pines, MNIST, regression tasks and Shakespeare (DESIGN.md §5).

Entry point :func:`load_dataset`; every loader returns a :class:`Dataset` of numpy arrays and raises
:class:`DataError` for missing or malformed files and invalid options. Files are looked up in the
data directory (:func:`resolve_data_dir`: ``data_dir=...``, else ``$LPT_DATA_DIR``, else
``~/.cache/lpt/data``), under ``<data_dir>/<name>/`` or directly in ``<data_dir>/``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from lpt.data.common import DATA_DIR_ENV, DataError, Dataset, resolve_data_dir
from lpt.data.cifar10 import load_cifar10
from lpt.data.indian_pines import load_indian_pines
from lpt.data.mnist import load_mnist
from lpt.data.peaks import load_peaks
from lpt.data.regression import load_regression_peaks, load_regression_pendulum
from lpt.data.shakespeare import load_shakespeare

__all__ = [
    "DATA_DIR_ENV",
    "DATASETS",
    "DataError",
    "Dataset",
    "load_dataset",
    "load_indian_pines",
    "load_mnist",
    "load_peaks",
    "load_regression_peaks",
    "load_regression_pendulum",
    "load_shakespeare",
    "resolve_data_dir",
]

DATASETS: dict[str, Callable[..., Dataset]] = {
    "peaks": load_peaks,
    "indian_pines": load_indian_pines,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "regression_peaks": load_regression_peaks,
    "regression_pendulum": load_regression_pendulum,
    "shakespeare": load_shakespeare,
}
"""Loader of each data set name accepted by :func:`load_dataset`."""

_COMMON = ("data_dir", "seed")


def _options(loader: Callable[..., Dataset]) -> list[str]:
    """The data-set specific keyword options of ``loader``."""
    params = inspect.signature(loader).parameters
    return [p for p in params if p not in _COMMON]


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **options: object,
) -> Dataset:
    """Loads the data set ``name`` with its loader's ``options``.

    Args:
        name: One of ``"peaks"``, ``"indian_pines"``, ``"mnist"``, ``"regression_peaks"``,
            ``"regression_pendulum"``.
        data_dir: Data directory (ignored by the generated data sets).
        seed: Seed of generation or splitting (ignored by MNIST and the reference peaks files).
        **options: Keyword options of the loader, e.g. ``n_train``, ``n_val``, ``dtype``; see
            :func:`load_peaks`, :func:`load_indian_pines`, :func:`load_mnist`,
            :func:`load_regression_peaks`, :func:`load_regression_pendulum`.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: For an unknown name or option, an invalid option value, or missing or
            malformed files.
    """
    loader = DATASETS.get(name) if isinstance(name, str) else None
    if loader is None:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    valid = _options(loader)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise DataError(
            f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}"
        )
    if "data_dir" in inspect.signature(loader).parameters:
        options["data_dir"] = data_dir
    return loader(seed=seed, **options)
