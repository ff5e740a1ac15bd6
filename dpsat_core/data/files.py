"""Data sets from the user's own files: CSV, NPZ, MNIST/FashionMNIST IDX and CIFAR-10 batches."""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .dataset import Dataset, Split, finish

MAX_FILE_BYTES = 512 * 1024**2
# A text column with at most this many distinct values (and a repeating one) is a category.
MAX_CATEGORIES = 50


def check_size(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path.name} is empty")
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{path.name} is {size / 1024**2:.0f} MiB; the limit is {MAX_FILE_BYTES // 1024**2} MiB: subsample it first"
        )


def _rows(mask: pd.Series) -> str:
    return ", ".join(str(i + 1) for i in np.flatnonzero(mask.to_numpy())[:5])


def _encode_table(frame: pd.DataFrame, source: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Numeric columns kept (to be standardised), categories one-hot; anything else is an error."""
    blocks, names, numeric_mask = [], [], []
    for column in frame.columns:
        values = frame[column]
        missing = values.isna()
        if missing.any():
            raise DataError(
                f"{source}: column {column!r} has {int(missing.sum())} missing values (rows {_rows(missing)}): "
                "fill or drop them"
            )
        if values.dtype.kind in "biuf":
            blocks.append(values.to_numpy(dtype=np.float64)[:, None])
            names.append(str(column))
            numeric_mask.append(True)
            continue
        as_numbers = pd.to_numeric(values, errors="coerce")
        text = as_numbers.isna()
        if text.mean() < 0.5:
            first = values[text].iloc[0]
            raise DataError(
                f"{source}: column {column!r} is numeric but holds text in {int(text.sum())} rows "
                f"(rows {_rows(text)}, e.g. {first!r}): fix or drop those rows"
            )
        levels = sorted(values.astype(str).unique())
        if len(levels) > MAX_CATEGORIES or len(levels) > 0.5 * len(values):
            raise DataError(
                f"{source}: column {column!r} looks like free text ({len(levels)} distinct values): "
                f"drop it, or encode it as numbers"
            )
        strings = values.astype(str).to_numpy()
        blocks.append(np.stack([strings == level for level in levels], axis=1).astype(np.float64))
        names.extend(f"{column}={level}" for level in levels)
        numeric_mask.extend([False] * len(levels))
    if not blocks:
        raise DataError(f"{source}: no feature columns besides the target")
    return np.hstack(blocks), names, np.array(numeric_mask)


def load_csv(path: Path, *, target: str | None, split: Split) -> Dataset:
    """A CSV table with a header row; `target` names the label column."""
    check_size(path)
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise DataError(f"{path.name} has a header but no rows")
    columns = [str(c) for c in frame.columns]
    if not target:
        raise DataError(f"{path.name}: name the label column with --target (columns: {', '.join(columns)})")
    if target not in frame.columns:
        raise DataError(f"{path.name}: no column {target!r}; columns are {', '.join(columns)}")
    labels = frame.pop(target)
    if labels.isna().any():
        raise DataError(
            f"{path.name}: target column {target!r} has {int(labels.isna().sum())} missing labels "
            f"(rows {_rows(labels.isna())}): drop those rows"
        )
    x, names, numeric = _encode_table(frame, path.name)
    return finish(
        path.stem,
        "tabular",
        x,
        labels.astype(str).to_numpy() if labels.dtype == object else labels.to_numpy(),
        split=split,
        feature_names=names,
        standardize=numeric,
    )


def _as_images(x: np.ndarray) -> np.ndarray:
    """(n,H,W) → (n,1,H,W); channels-last (n,H,W,1|3) → channels-first."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.transpose(x, (0, 3, 1, 2))
    return x


def load_npz(path: Path, *, split: Split) -> Dataset:
    """An .npz with arrays `x` (n,d), (n,H,W), (n,H,W,C) or (n,C,H,W) and `y` (n,)."""
    check_size(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "x" not in keys or "y" not in keys:
                raise DataError(f"{path.name}: an NPZ needs arrays 'x' and 'y'; found {keys}")
            x, y = archive["x"], archive["y"]
    except (ValueError, OSError) as exc:
        raise DataError(f"{path.name} is not a readable NPZ: {exc}") from None
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(f"{path.name}: x must be (n, features) or images (n, H, W[, C]); got shape {x.shape}")
    kind = "tabular" if x.ndim == 2 else "image"
    return finish(path.stem, kind, _as_images(x) if kind == "image" else x, y, split=split)


def _open(path: Path) -> bytes:
    check_size(path)
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000, type 0x08 (ubyte), ndim, then big-endian sizes."""
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path.name} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path.name}: header says {shape} but holds {body.size} values")
    return body.reshape(shape)


def _find(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise DataError(f"{folder}: no file matching {pattern!r}")
    return matches[0]


def load_idx_folder(folder: Path, *, split: Split) -> Dataset:
    """MNIST or FashionMNIST: train/t10k images and labels, `*-ubyte` or `*-ubyte.gz`."""
    parts = {
        key: read_idx(_find(folder, f"{prefix}-{kind}-idx{dim}-ubyte*"))
        for key, prefix, kind, dim in (
            ("xtr", "train", "images", 3),
            ("ytr", "train", "labels", 1),
            ("xte", "t10k", "images", 3),
            ("yte", "t10k", "labels", 1),
        )
    }
    return finish(
        folder.name,
        "image",
        parts["xtr"][:, None] / 255.0,
        parts["ytr"],
        split=split,
        test=(parts["xte"][:, None] / 255.0, parts["yte"]),
    )


class _ArraysOnly(pickle.Unpickler):
    """CIFAR batches are pickles: allow numpy arrays and plain containers, nothing that runs code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load {module}.{name} from a CIFAR batch: only arrays and lists are allowed")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(_open(path)), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as exc:
        raise DataError(f"{path.name} is not a CIFAR-10 python batch ({type(exc).__name__})") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels)


def load_cifar_folder(folder: Path, *, split: Split) -> Dataset:
    """CIFAR-10 python batches: data_batch_* for training, test_batch for testing."""
    train = [_cifar_batch(p) for p in sorted(folder.glob("data_batch_*"))]
    x_test, y_test = _cifar_batch(_find(folder, "test_batch"))
    x = np.concatenate([b[0] for b in train]) / 255.0
    y = np.concatenate([b[1] for b in train])
    return finish(folder.name, "image", x, y, split=split, test=(x_test / 255.0, y_test))


def load_folder(folder: Path, *, split: Split) -> Dataset:
    """Pick the loader by what the folder holds (CIFAR may sit in `cifar-10-batches-py/`)."""
    if any(folder.glob("*-idx3-ubyte*")):
        return load_idx_folder(folder, split=split)
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if any(candidate.glob("data_batch_*")):
            return load_cifar_folder(candidate, split=split)
    raise DataError(
        f"{folder}: found neither MNIST-style IDX files (train-images-idx3-ubyte…) nor CIFAR-10 batches (data_batch_1…)"
    )
