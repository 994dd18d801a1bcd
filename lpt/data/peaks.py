"""The peaks level-set classification problem (Günther et al., SIAM J. Math. Data Sci. 2020).

A point ``(x, y)`` in ``[-3, 3]^2`` belongs to the class ``k`` in ``0..4`` of the equal-width bin of
``[z_min, z_max]`` that the peaks function ``z(x, y)`` falls in, where ``z_min ≈ -6.551`` and
``z_max ≈ 8.106`` are the extrema of ``z`` over the square.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import numpy as np

from lpt.data.common import (
    DataError,
    Dataset,
    FloatName,
    check_choice,
    check_dtype,
    check_int,
    find_file,
    make_dataset,
    make_rng,
)

NAME = "peaks"
NUM_CLASSES = 5
DOMAIN = (-3.0, 3.0)
"""The square ``[-3, 3]^2`` on which the points live."""

_GRID_POINTS = 1001
_SOURCES = ("generate", "reference")
_REFERENCE_SOURCE = (
    "the reference code of Günther et al., GitHub steffi7574/LayerParallelLearning, "
    "folder examples/peaks/ (or use source='generate')"
)


def peaks_function(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The peaks function (MATLAB's ``peaks``)::

        z(x, y) = 3 (1-x)^2 e^{-x^2-(y+1)^2} - 10 (x/5 - x^3 - y^5) e^{-x^2-y^2}
                  - e^{-(x+1)^2-y^2} / 3
    """
    return (
        3.0 * (1.0 - x) ** 2 * np.exp(-(x**2) - (y + 1.0) ** 2)
        - 10.0 * (x / 5.0 - x**3 - y**5) * np.exp(-(x**2) - y**2)
        - np.exp(-((x + 1.0) ** 2) - y**2) / 3.0
    )


@functools.lru_cache(maxsize=1)
def peaks_range() -> tuple[float, float]:
    """Minimum and maximum of the peaks function on a 1001 x 1001 grid of ``[-3, 3]^2``.

    Returns:
        ``(z_min, z_max) ≈ (-6.5511, 8.1060)``; computed once and cached.
    """
    g = np.linspace(*DOMAIN, _GRID_POINTS)
    z = peaks_function(g[:, None], g[None, :])
    return float(z.min()), float(z.max())


def peaks_labels(points: np.ndarray) -> np.ndarray:
    """Class of each point: the equal-width bin of ``[z_min, z_max]`` holding ``z(x, y)``.

    Args:
        points: Array ``(n, 2)`` of ``(x, y)`` coordinates.

    Returns:
        int32 labels ``(n,)`` in ``0..4``; values at or beyond the extrema go to the end bins.
    """
    points = np.asarray(points, dtype=np.float64)
    lo, hi = peaks_range()
    z = peaks_function(points[:, 0], points[:, 1])
    bins = np.floor((z - lo) / (hi - lo) * NUM_CLASSES)
    return np.clip(bins, 0, NUM_CLASSES - 1).astype(np.int32)


def sample_uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points drawn uniformly from ``[-3, 3]^2``, float64 ``(n, 2)``."""
    return rng.uniform(*DOMAIN, size=(n, 2))


def _sample_balanced(
    rng: np.random.Generator, per_class: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Rejection sampling: draws uniform batches until every class has ``per_class`` points,
    keeps the first ``per_class`` of each class, and shuffles them.

    Points are rounded to ``dtype`` before labelling, so labels match the stored features exactly.
    """
    batch = max(4096, 50 * per_class)  # the rarest class holds ~2.8 % of the square
    points, labels = [], []
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    while (counts < per_class).any():
        p = sample_uniform(rng, batch).astype(dtype)
        lab = peaks_labels(p)
        points.append(p)
        labels.append(lab)
        counts += np.bincount(lab, minlength=NUM_CLASSES)
    p, lab = np.concatenate(points), np.concatenate(labels)
    keep = np.concatenate([np.flatnonzero(lab == c)[:per_class] for c in range(NUM_CLASSES)])
    keep = rng.permutation(keep)
    return p[keep], lab[keep]


def _read_table(path: os.PathLike[str], columns: int) -> np.ndarray:
    """Reads a whitespace-separated numeric table, float64 ``(n, columns)``; checks the shape."""
    try:
        table = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{NAME}: cannot parse {path} as a numeric table: {err}") from err
    if table.shape[1] != columns or table.shape[0] == 0:
        raise DataError(
            f"{NAME}: {path} has shape {table.shape}; "
            f"expected {columns} columns and at least one row"
        )
    return table


def _read_reference_split(
    data_dir: str | os.PathLike[str] | None, split: str, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``features_<split>.dat`` and ``labels_<split>.dat``; checks shapes and one-hot rows."""
    feat_path = find_file(data_dir, NAME, [f"features_{split}.dat"], source=_REFERENCE_SOURCE)
    lab_path = find_file(data_dir, NAME, [f"labels_{split}.dat"], source=_REFERENCE_SOURCE)
    features = _read_table(feat_path, 2)
    onehot = _read_table(lab_path, NUM_CLASSES)
    if len(features) != len(onehot):
        raise DataError(
            f"{NAME}: {feat_path} has {len(features)} rows but {lab_path} has {len(onehot)}; "
            "expected equal row counts"
        )
    is_onehot = np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1.0)
    if not is_onehot.all():
        row = int(np.flatnonzero(~is_onehot)[0])
        raise DataError(
            f"{NAME}: {lab_path} row {row + 1} is {onehot[row].tolist()}; expected one-hot rows"
        )
    if len(features) != n:
        raise DataError(
            f"{NAME}: invalid option n_{'train' if split == 'training' else 'val'}={n}; the "
            f"reference file {feat_path} holds {len(features)} points (use that number, or "
            "source='generate' for other sizes)"
        )
    return features, onehot.argmax(axis=1)


def load_peaks(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    source: Literal["generate", "reference"] = "generate",
    n_train: int = 5000,
    n_val: int = 200,
    dtype: FloatName = "float32",
) -> Dataset:
    """Loads the peaks level-set classification data (5 classes).

    Layout: features ``(n, 2)`` = ``(x, y)`` in ``[-3, 3]^2``, not normalised; labels int32 ``(n,)``
    in ``0..4``, the bin of the peaks value (see :func:`peaks_labels`).

    ``source="generate"`` draws the points with ``numpy.random.default_rng(seed)`` by rejection
    sampling so that each class has exactly ``n_train / 5`` training and ``n_val / 5``
    validation points (two independent draws, training first), each split shuffled.
    ``source="reference"`` reads the files ``features_training.dat``, ``labels_training.dat``,
    ``features_validation.dat`` and ``labels_validation.dat`` of the reference C++ code
    (5000 / 200 points, 1000 / 40 per class, in file order, i.e. sorted by class; one-hot labels
    are converted to indices); ``seed`` is unused. Those files lie on a grid of spacing 6/255, so
    they repeat points, and some validation points also occur in training.

    Args:
        data_dir: Data directory (``source="reference"`` only), see
            :func:`lpt.data.common.resolve_data_dir`; files are looked up in ``<data_dir>/peaks/``
            and ``<data_dir>/``.
        seed: Seed of the generator.
        source: ``"generate"`` or ``"reference"``.
        n_train: Number of training points, a multiple of 5 (the reference files hold 5000).
        n_val: Number of validation points, a multiple of 5 (the reference files hold 200).
        dtype: Feature dtype, ``"float32"`` or ``"float64"``.

    Returns:
        A classification :class:`Dataset` with ``num_outputs=5``.

    Raises:
        DataError: For invalid options, or missing or malformed reference files.
    """
    source = check_choice(NAME, "source", source, _SOURCES)
    fdtype = check_dtype(NAME, dtype)
    sizes = {"n_train": n_train, "n_val": n_val}
    for option, value in sizes.items():
        if check_int(NAME, option, value, minimum=NUM_CLASSES) % NUM_CLASSES:
            raise DataError(
                f"{NAME}: invalid option {option}={value!r}; expected a multiple of "
                f"{NUM_CLASSES} (the classes are balanced)"
            )
    rng = make_rng(NAME, seed)
    if source == "reference":
        train = _read_reference_split(data_dir, "training", n_train)
        val = _read_reference_split(data_dir, "validation", n_val)
    else:
        train = _sample_balanced(rng, n_train // NUM_CLASSES, fdtype)
        val = _sample_balanced(rng, n_val // NUM_CLASSES, fdtype)
    return make_dataset(NAME, "classification", NUM_CLASSES, train, val, fdtype)
