"""Data sets from the user's own files: CSV, NPZ, MNIST/FashionMNIST IDX and CIFAR-10 batches."""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import DataError
from ..results import counted

if TYPE_CHECKING:
    import pandas as pd
from .dataset import ROW_DERIVED, Dataset, Split, encode_labels, finish, split_rows
from .schema import Schema

MAX_FILE_BYTES = 512 * 1024**2
# What the arrays of one file may take once unpacked (a .gz or a compressed .npz): a 63 KB archive can declare
# gigabytes, so declared sizes are checked against this before anything is decompressed.
MAX_DATA_BYTES = 512 * 1024**2
# A text column with at most this many distinct values (and a repeating one) is a category.
MAX_CATEGORIES = 50


def check_size(path: Path) -> None:
    """Refuse an empty file, or one over `MAX_FILE_BYTES`, before reading it."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path.name} is empty")
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{path.name} is {size / 1024**2:.0f} MiB; the limit is {MAX_FILE_BYTES // 1024**2} MiB: subsample it first"
        )


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.0f} MiB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rows(mask: pd.Series) -> str:
    """'row 6' or 'rows 2, 5, 9, 11, 12, …': the first five flagged rows, counted from 1."""
    found = np.flatnonzero(mask.to_numpy())
    listed = ", ".join(str(i + 1) for i in found[:5]) + (", …" if len(found) > 5 else "")
    return f"row {listed}" if len(found) == 1 else f"rows {listed}"


def _encode_table(
    frame: pd.DataFrame, source: str, *, levels_from: Optional[np.ndarray] = None, schema: Optional[Schema] = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Numeric columns kept (to be scaled), categories one-hot; anything else is an error. The levels of a
    category are the schema's, else those of the rows `levels_from` (the training rows), else of all rows (what
    fitted preprocessing always did); a value outside them encodes as all zeros, so no row outside the training
    rows changes the model's input width."""
    import pandas as pd

    categories = schema.categories if schema is not None else {}
    blocks, names, numeric_mask = [], [], []
    for column in frame.columns:
        values = frame[column]
        missing = values.isna()
        if missing.any():
            raise DataError(
                f"{source}: column {column!r} has {counted(int(missing.sum()), 'missing value')} ({_rows(missing)}): "
                "fill or drop them"
            )
        if values.dtype.kind in "biuf" and str(column) not in categories:
            blocks.append(values.to_numpy(dtype=np.float64)[:, None])
            names.append(str(column))
            numeric_mask.append(True)
            continue
        if schema is not None and str(column) in schema.bounds:
            raise DataError(f"schema {schema.name}: column {column!r} holds text, so min and max do not apply to it")
        as_numbers = pd.to_numeric(values, errors="coerce")
        text = as_numbers.isna()
        if str(column) not in categories and text.mean() < 0.5:
            first = values[text].iloc[0]
            raise DataError(
                f"{source}: column {column!r} is numeric but holds text in {counted(int(text.sum()), 'row')} "
                f"({_rows(text)}, e.g. {first!r}): fix or drop them"
            )
        strings = values.astype(str).to_numpy()
        if str(column) in categories:
            levels = list(categories[str(column)])
        else:
            seen = strings if levels_from is None else strings[levels_from]
            levels = sorted(np.unique(seen).tolist())
            if len(levels) > MAX_CATEGORIES or len(levels) > 0.5 * len(seen):
                raise DataError(
                    f"{source}: column {column!r} looks like free text ({len(levels)} distinct values): "
                    f"drop it, encode it as numbers, or list its categories in a schema"
                )
        blocks.append(np.stack([strings == level for level in levels], axis=1).astype(np.float64))
        names.extend(f"{column}={level}" for level in levels)
        numeric_mask.extend([False] * len(levels))
    if not blocks:
        raise DataError(f"{source}: no feature columns besides the target")
    return np.hstack(blocks), names, np.array(numeric_mask)


def read_csv(path: Path, *, rows: Optional[int] = None) -> pd.DataFrame:
    """The CSV's table (its first `rows` rows when given, for a preview), or one clear `DataError`: the Data
    page's preview and the loader read through here, so a bad file gets the same single message."""
    import pandas as pd  # 0.5 s to import: only when a CSV is read

    path = Path(path)
    check_size(path)
    try:
        return pd.read_csv(path, nrows=rows)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} is empty (no header row)") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path.name} is not UTF-8 text (it holds byte 0x{exc.object[exc.start]:02x}): save it as a UTF-8 CSV"
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path.name} is not a readable CSV: {_first_line(exc)}") from None


def _check_schema_columns(schema: Optional[Schema], columns: list[str], name: str) -> None:
    named = set(schema.bounds) | set(schema.categories) if schema is not None else set()
    unknown = sorted(named - set(columns))
    if unknown:
        raise DataError(f"schema {schema.name}: column(s) {unknown} are not in {name} (columns: {', '.join(columns)})")


def load_csv(
    path: Path, *, target: str | None, split: Split, preprocessing: str = "private", schema: Optional[Schema] = None
) -> Dataset:
    """A CSV table with a header row; `target` names the label column. With private preprocessing the rows are
    split first, and category levels come from the schema or the training rows only."""
    frame = read_csv(path)
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
            f"{path.name}: target column {target!r} has {counted(int(labels.isna().sum()), 'missing label')} "
            f"({_rows(labels.isna())}): drop them"
        )
    values = labels.astype(str).to_numpy() if labels.dtype == object else labels.to_numpy()
    if preprocessing == "fitted":
        x, names, numeric = _encode_table(frame, path.name)
        return finish(
            path.stem,
            "tabular",
            x,
            values,
            split=split,
            feature_names=names,
            standardize=numeric,
            preprocessing="fitted",
        )
    _check_schema_columns(schema, [str(c) for c in frame.columns], path.name)
    rows = split_rows(encode_labels(values, path.name)[0], split, path.name)
    x, names, numeric = _encode_table(frame, path.name, levels_from=rows[0], schema=schema)
    bounds = [schema.bounds_of(n) if schema is not None and is_number else None for n, is_number in zip(names, numeric)]
    read = _read_from_rows(schema, levels=not all(numeric))
    data = finish(
        path.stem,
        "tabular",
        x,
        values,
        split=split,
        feature_names=names,
        standardize=numeric,
        bounds=bounds,
        classes=None if schema is None else schema.classes,
        rows=rows,
        bounds_source=f"schema {schema.name}" if schema is not None else "",
    )
    return _say_read_from_rows(data, read)


def _read_from_rows(schema: Optional[Schema], *, levels: bool) -> list[str]:
    """What of a user table's shape the training rows decide when no schema lists it: the class set (the output
    width) and category levels (the input width). A value seen in one row changes them: ε does not cover that."""
    read = ["the class set"] if schema is None or schema.classes is None else []
    return read + (["category levels"] if levels and (schema is None or not schema.categories) else [])


def _say_read_from_rows(data: Dataset, read: list[str]) -> Dataset:
    """`data` whose scaling note also says what the rows decided (no empty part when nothing was scaled yet)."""
    if not read:
        return data
    said = f"{' and '.join(read)} {ROW_DERIVED}"
    return dataclasses.replace(data, scaling="; ".join(part for part in (data.scaling, said) if part))


def _as_images(x: np.ndarray) -> np.ndarray:
    """(n,H,W) → (n,1,H,W); channels-last (n,H,W,1|3) → channels-first."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.transpose(x, (0, 3, 1, 2))
    return x


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# What reading a damaged archive can raise (zip directory, deflate stream, .npy header or body).
_NPZ_FAILURES = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def _npy_header(archive: zipfile.ZipFile, member: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The declared shape and dtype of one array in an .npz, read from its .npy header without loading it."""
    with archive.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version not in _NPY_HEADERS:
            raise DataError(f"{name}: array {member!r} uses .npy format {version}: save it with numpy.savez")
        shape, _, dtype = _NPY_HEADERS[version](fp)
    return shape, dtype


def npz_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Check an .npz before loading anything: a zip of .npy arrays holding 'x' and 'y' of numbers whose declared
    size fits `MAX_DATA_BYTES`. Returns each array's declared shape and dtype."""
    path = Path(path)
    check_size(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m[: -len(".npy")]: m for m in archive.namelist() if m.endswith(".npy")}
            if "x" not in members or "y" not in members:
                raise DataError(f"{path.name}: an NPZ needs arrays 'x' and 'y'; found {sorted(members)}")
            arrays = {key: _npy_header(archive, members[key], path.name) for key in ("x", "y")}
    except DataError:
        raise
    except zipfile.BadZipFile:
        raise DataError(f"{path.name} is not an NPZ file (numpy.savez writes a zip of .npy arrays)") from None
    except _NPZ_FAILURES as exc:
        raise DataError(f"{path.name} is not a readable NPZ: {_first_line(exc)}") from None
    for key, (shape, dtype) in arrays.items():
        if dtype.hasobject:
            raise DataError(f"{path.name}: array {key!r} holds Python objects ({dtype}); save numbers instead")
    declared = sum(math.prod(shape) * dtype.itemsize for shape, dtype in arrays.values())
    if declared > MAX_DATA_BYTES:
        raise DataError(
            f"{path.name}: arrays 'x' and 'y' declare {_mib(declared)} unpacked; the limit is "
            f"{_mib(MAX_DATA_BYTES)}: subsample them first"
        )
    return arrays


def load_npz(path: Path, *, split: Split, preprocessing: str = "private", schema: Optional[Schema] = None) -> Dataset:
    """An .npz with arrays `x` (n,d), (n,H,W), (n,H,W,C) or (n,C,H,W) and `y` (n,). Private preprocessing: uint8
    images / 255; otherwise the schema's default bounds, else released statistics."""
    npz_arrays(path)  # declared sizes first: nothing is decompressed beyond the cap
    try:
        with np.load(path, allow_pickle=False) as archive:
            x, y = archive["x"], archive["y"]
    except _NPZ_FAILURES as exc:
        raise DataError(f"{path.name} is not a readable NPZ: {_first_line(exc)}") from None
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(f"{path.name}: x must be (n, features) or images (n, H, W[, C]); got shape {x.shape}")
    kind = "tabular" if x.ndim == 2 else "image"
    if kind == "image":
        x = _as_images(x)
    if preprocessing == "fitted":
        return finish(path.stem, kind, x, y, split=split, preprocessing="fitted")
    _check_schema_columns(schema, [], path.name)
    default = None if schema is None else schema.default_bounds
    common = dict(split=split, classes=None if schema is None else schema.classes)
    if kind == "image" and x.dtype == np.uint8 and default is None:
        data = finish(
            path.stem, kind, x / 255.0, y, fixed="fixed scale: bytes / 255, independent of the data", **common
        )
        return _say_read_from_rows(data, _read_from_rows(schema, levels=False))
    width = 1 if kind == "image" else x.shape[1]
    source = f"schema {schema.name}" if schema is not None else ""
    data = finish(path.stem, kind, x, y, bounds=[default] * width, bounds_source=source, **common)
    return _say_read_from_rows(data, _read_from_rows(schema, levels=False))


def _open(path: Path) -> bytes:
    """The file's bytes, gunzipped for `.gz` (at most `MAX_DATA_BYTES` of output, so a gzip bomb stops early)."""
    check_size(path)
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path) as stream:
            raw = stream.read(MAX_DATA_BYTES + 1)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path.name} is not a complete gzip file ({_first_line(exc)}): copy it again") from None
    if len(raw) > MAX_DATA_BYTES:
        raise DataError(f"{path.name} unpacks to more than {_mib(MAX_DATA_BYTES)} (the limit): subsample it first")
    return raw


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """An IDX file (MNIST's format) of `ndim` dimensions: magic 0x0000, type 0x08 (ubyte), ndim, then
    big-endian sizes."""
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path.name} is not an unsigned-byte IDX file")
    if raw[3] != ndim:
        raise DataError(f"{path.name}: an IDX file of {ndim} dimensions was expected; its header says {raw[3]}")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path.name}: the IDX header is cut short ({len(raw)} bytes; {start} are needed)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=start)
    if body.size != math.prod(shape):
        raise DataError(f"{path.name}: header says {shape} but holds {body.size} values")
    return body.reshape(shape)


def _find(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise DataError(f"{folder}: no file matching {pattern!r}")
    return matches[0]


PIXELS_NOTE = "fixed scale: pixel bytes / 255, independent of the data"


def load_idx_folder(folder: Path, *, split: Split, preprocessing: str = "private") -> Dataset:
    """MNIST or FashionMNIST: train/t10k images and labels, `*-ubyte` or `*-ubyte.gz`."""
    parts = {
        key: read_idx(_find(folder, f"{prefix}-{kind}-idx{dim}-ubyte*"), ndim=dim)
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
        preprocessing=preprocessing,
        fixed=PIXELS_NOTE,
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


CIFAR_IMAGE_BYTES = 3 * 32 * 32


def _unpickle_batch(path: Path) -> dict:
    """The batch's dict, unpickled with `_ArraysOnly`; any malformed pickle is one `DataError`."""
    raw = _open(path)
    try:
        batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # a damaged or foreign pickle can raise almost anything (protocol, opcode, EOF, type)
        raise DataError(f"{path.name} is not a CIFAR-10 python batch: {_first_line(exc)}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path.name} is not a CIFAR-10 python batch: it has no 'data' and 'labels'")
    return batch


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) and labels (n,) of one batch: 'data' must be n rows of 3,072 bytes."""
    batch = _unpickle_batch(path)
    try:
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path.name}: 'data' and 'labels' must be arrays ({_first_line(exc)})") from None
    if data.ndim != 2 or data.shape[1] != CIFAR_IMAGE_BYTES or data.dtype.kind not in "iu":
        raise DataError(
            f"{path.name}: 'data' must be n rows of {CIFAR_IMAGE_BYTES} bytes (3×32×32 per image); "
            f"got shape {data.shape}, dtype {data.dtype}"
        )
    if labels.shape != (len(data),):
        raise DataError(f"{path.name}: {len(data)} images but 'labels' has shape {labels.shape}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def load_cifar_folder(folder: Path, *, split: Split, preprocessing: str = "private") -> Dataset:
    """CIFAR-10 python batches: data_batch_* for training, test_batch for testing."""
    train = [_cifar_batch(p) for p in sorted(folder.glob("data_batch_*"))]
    x_test, y_test = _cifar_batch(_find(folder, "test_batch"))
    x = np.concatenate([b[0] for b in train]) / 255.0
    y = np.concatenate([b[1] for b in train])
    return finish(
        folder.name,
        "image",
        x,
        y,
        split=split,
        test=(x_test / 255.0, y_test),
        preprocessing=preprocessing,
        fixed=PIXELS_NOTE,
    )


def load_folder(folder: Path, *, split: Split, preprocessing: str = "private") -> Dataset:
    """Pick the loader by what the folder holds (CIFAR may sit in `cifar-10-batches-py/`)."""
    if any(folder.glob("*-idx3-ubyte*")):
        return load_idx_folder(folder, split=split, preprocessing=preprocessing)
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if any(candidate.glob("data_batch_*")):
            return load_cifar_folder(candidate, split=split, preprocessing=preprocessing)
    raise DataError(
        f"{folder}: found neither MNIST-style IDX files (train-images-idx3-ubyte…) nor CIFAR-10 batches (data_batch_1…)"
    )
