"""The Indian Pines hyperspectral scene (AVIRIS, 12 June 1992; 145 x 145 pixels, 16 classes).

Each labelled pixel's spectrum is one sample. Data: Baumgardner, Biehl, Landgrebe (2015), Purdue
University Research Repository, doi:10.4231/R7RX991C (CC BY 3.0); ``.mat`` files from the GIC
"Hyperspectral Remote Sensing Scenes" page of UPV/EHU.
"""

from __future__ import annotations

import os
from typing import Literal, NamedTuple

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
    standardize,
    stratified_split,
)

NAME = "indian_pines"
NUM_CLASSES = 16
SCENE_SHAPE = (145, 145)
GT_FILE, GT_VARIABLE = "Indian_pines_gt.mat", "indian_pines_gt"
_SOURCE = (
    'the GIC "Hyperspectral Remote Sensing Scenes" page, '
    "https://www.ehu.eus/ccwintco/index.php/Hyperspectral_Remote_Sensing_Scenes "
    "(original data: Purdue University, doi:10.4231/R7RX991C)"
)


class _Variant(NamedTuple):
    file: str
    variable: str
    bands: int


VARIANTS = {
    "corrected": _Variant("Indian_pines_corrected.mat", "indian_pines_corrected", 200),
    "uncorrected": _Variant("Indian_pines.mat", "indian_pines", 220),
}
"""Scene files: the corrected scene lacks the 20 water-absorption bands of the uncorrected one."""


def _load_mat_array(path: os.PathLike[str], variable: str, shape: tuple[int, ...]) -> np.ndarray:
    """Reads ``variable`` from the MAT-file ``path`` and checks its shape.

    Raises:
        DataError: If the file cannot be read, lacks the variable, or the shape differs.
    """
    import scipy.io  # here, not at the top: 0.1 s that every lpt process would pay at start

    try:
        contents = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several types for corrupt files
        raise DataError(f"{NAME}: cannot read MAT-file {path}: {err}") from err
    if variable not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DataError(
            f"{NAME}: {path} has no variable {variable!r} (it holds {found}); "
            "expected the original GIC file"
        )
    array = contents[variable]
    if array.shape != shape:
        raise DataError(
            f"{NAME}: variable {variable!r} in {path} has shape {array.shape}; expected {shape}"
        )
    return array


def _labelled_pixels(
    data_dir: str | os.PathLike[str] | None, spec: _Variant
) -> tuple[np.ndarray, np.ndarray]:
    """Reads the ground truth and the scene of ``spec`` and keeps the labelled pixels.

    Returns:
        The spectra ``(n, bands)`` of the pixels with a ground-truth class and their labels ``0..15``
        (class minus one), in the scene's row-major pixel order.

    Raises:
        DataError: If a file is missing or malformed, or the ground truth holds labels outside ``0..16``.
    """
    gt_path = find_file(data_dir, NAME, [GT_FILE], source=_SOURCE)
    cube_path = find_file(data_dir, NAME, [spec.file], source=_SOURCE)
    gt = _load_mat_array(gt_path, GT_VARIABLE, SCENE_SHAPE).astype(np.int64)
    if gt.min() < 0 or gt.max() > NUM_CLASSES:
        raise DataError(
            f"{NAME}: {gt_path} holds labels {gt.min()}..{gt.max()}; expected 0..{NUM_CLASSES}"
        )
    cube = _load_mat_array(cube_path, spec.variable, (*SCENE_SHAPE, spec.bands))
    mask = gt > 0
    return cube[mask], gt[mask] - 1


def load_indian_pines(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    variant: Literal["corrected", "uncorrected"] = "corrected",
    n_train: int = 4000,
    n_val: int = 2000,
    dtype: FloatName = "float32",
) -> Dataset:
    """Loads the labelled pixels of Indian Pines with a seeded stratified split (16 classes).

    Layout: features ``(n, bands)`` — one spectrum per labelled pixel, 200 bands (corrected) or
    220 (uncorrected); labels int32 ``(n,)`` in ``0..15`` (ground-truth classes 1..16; the
    10776 unlabelled pixels, class 0, are dropped, leaving 10249).

    Split: :func:`lpt.data.common.stratified_split` with ``numpy.random.default_rng(seed)`` —
    ``n_train`` and ``n_val`` samples exactly, each class proportionally represented (at least one
    sample per class in each split), training and validation disjoint, each in random order.

    Normalisation: every band is z-scored with the mean and standard deviation of the *training*
    split, ``x <- (x - mean_train) / std_train``; the same transform is applied to validation.

    Args:
        data_dir: Data directory, see :func:`lpt.data.common.resolve_data_dir`; files are looked up
            in ``<data_dir>/indian_pines/`` and ``<data_dir>/``.
        seed: Seed of the split.
        variant: ``"corrected"`` (``Indian_pines_corrected.mat``) or ``"uncorrected"``
            (``Indian_pines.mat``); both with ``Indian_pines_gt.mat``.
        n_train: Number of training pixels.
        n_val: Number of validation pixels; ``n_train + n_val <= 10249``.
        dtype: Feature dtype, ``"float32"`` or ``"float64"``.

    Returns:
        A classification :class:`Dataset` with ``num_outputs=16``.

    Raises:
        DataError: For invalid options, or missing or malformed files.
    """
    spec = VARIANTS[check_choice(NAME, "variant", variant, tuple(VARIANTS))]
    n_train = check_int(NAME, "n_train", n_train)
    n_val = check_int(NAME, "n_val", n_val)
    fdtype = check_dtype(NAME, dtype)
    rng = make_rng(NAME, seed)

    features, labels = _labelled_pixels(data_dir, spec)
    if n_train + n_val > len(labels):
        raise DataError(
            f"{NAME}: invalid options n_train={n_train}, n_val={n_val}; "
            f"n_train + n_val must not exceed the {len(labels)} labelled pixels"
        )
    train_idx, val_idx = stratified_split(labels, n_train, n_val, rng)
    x_train, x_val = standardize(features[train_idx], features[val_idx])
    return make_dataset(
        NAME,
        "classification",
        NUM_CLASSES,
        (x_train, labels[train_idx]),
        (x_val, labels[val_idx]),
        fdtype,
    )
