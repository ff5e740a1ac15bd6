"""Data sets by name or path: built-ins from installed packages, or the user's files."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import DataError
from .builtin import BUILTIN, DEFAULT_SIZES
from .dataset import MAX_VALIDATION_FRACTION, Dataset, Split, release_scaling
from .schema import SCHEMA_TYPES, Schema, load_schema

if TYPE_CHECKING:
    from ..config import TrainConfig
from .files import load_csv, load_folder, load_npz, npz_arrays, read_csv
from .scaling import ReleasedScaling

# In research mode the released scaling statistics draw their noise from the run's seed plus this prime
# (training's noise and sampling use other offsets), so the runs of one seed share one release and stay paired.
STATISTICS_SEED_OFFSET = 15485863

__all__ = [
    "BUILTIN",
    "DEFAULT_SIZES",
    "FILE_TYPES",
    "MAX_VALIDATION_FRACTION",
    "Dataset",
    "SCHEMA_TYPES",
    "Schema",
    "Split",
    "data_fingerprint",
    "load_config_dataset",
    "load_config_split",
    "load_dataset",
    "load_run_dataset",
    "load_schema",
    "npz_arrays",
    "read_csv",
]

# File types a user can point to (besides a folder of IDX or CIFAR-10 files).
FILE_TYPES = (".csv", ".npz")


@functools.lru_cache(maxsize=8)
def _load_cached(
    source: str,
    target: Optional[str],
    size: Optional[int],
    split: Split,
    stamp: tuple,
    preprocessing: str,
    schema_path: Optional[str],
    schema_stamp: tuple,
) -> Dataset:
    schema = None if schema_path is None else load_schema(schema_path)
    if schema is not None and (source in BUILTIN or Path(source).is_dir()):
        raise DataError(
            f"schema {schema.name}: a schema describes your own CSV or NPZ file; built-in data sets and image "
            "folders use fixed scales or documented bounds already: drop the schema"
        )
    if source in BUILTIN:
        return BUILTIN[source](size=size, split=split, preprocessing=preprocessing)
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_dir():
        loaded = load_folder(path, split=split, preprocessing=preprocessing)
    elif suffix == ".csv":
        loaded = load_csv(path, target=target, split=split, preprocessing=preprocessing, schema=schema)
    elif suffix == ".npz":
        loaded = load_npz(path, split=split, preprocessing=preprocessing, schema=schema)
    else:
        raise DataError(
            f"{path.name}: unsupported file type {suffix or '(none)'}: use {', '.join(FILE_TYPES)}, "
            "or a folder of IDX/CIFAR files"
        )
    return dataclasses.replace(loaded, fingerprint=data_fingerprint(source, schema_path))


def load_dataset(
    source: str,
    *,
    target: Optional[str] = None,
    size: Optional[int] = None,
    split_seed: int = 0,
    validation_fraction: float = 0.0,
    preprocessing: str = "private",
    schema: Optional[str] = None,
) -> Dataset:
    """Load a built-in data set by name (digits, breast_cancer, mnist1d, synthetic) or a file/folder,
    split into train, validation (`validation_fraction` of the training rows) and test by `split_seed`.

    `preprocessing` "private" scales with nothing read from the rows (fixed scales, or the public bounds of
    `schema`, a JSON/TOML file); numeric features without public bounds stay raw, listed in `pending`, until a
    run releases their scale (`load_config_dataset`). "fitted" is the scaling of earlier versions.
    Results are cached per process (arrays are read-only); a file's cache entry
    is keyed by its modification time and size, so an edited file is re-read.
    """
    split = Split(split_seed, validation_fraction)
    schema_key: tuple = (None, ())
    if schema is not None:
        schema_path = Path(schema).expanduser()
        schema_key = (str(schema_path), _stamp(schema_path) if schema_path.is_file() else ())
    if source not in BUILTIN:
        if "\0" in source:  # the OS cannot open such a path: say so instead of numpy's or pathlib's ValueError
            raise DataError(f"data set path {source!r} contains a NUL byte: rename the file")
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"unknown dataset {source!r}: use a built-in one ({', '.join(BUILTIN)}) "
                f"or a path to a {' or '.join(FILE_TYPES)} file or a data folder"
            )
        stat = path.stat()
        return _load_cached(
            str(path), target, None, split, (stat.st_mtime_ns, stat.st_size), preprocessing, *schema_key
        )
    return _load_cached(source, None, size, split, (), preprocessing, *schema_key)


def load_config_split(config: "TrainConfig") -> Dataset:
    """The data set a config names, split as it says, with the features that need released statistics still
    unscaled (`pending`): its sizes and shapes, with nothing released and no accountant imported."""
    return load_dataset(
        config.dataset,
        target=config.target,
        size=config.dataset_size,
        split_seed=config.split_seed,
        validation_fraction=config.validation_fraction,
        preprocessing=config.preprocessing,
        schema=config.schema,
    )


def load_config_dataset(config: "TrainConfig", released: Optional[ReleasedScaling] = None) -> Dataset:
    """The data set a config names, split and scaled as it says: features without public bounds are scaled by
    statistics released with the noise its privacy plan gives them (`planning.statistics_noise`), or by
    `released`, statistics a stored run released (`load_run_dataset`). The release's noise comes from the run's
    seed plus `STATISTICS_SEED_OFFSET` in research mode, and from the OS entropy source (`secrets`) in release
    mode, held only by its generator: a fresh draw per call, reproducible from nothing stored."""
    dataset = load_config_split(config)
    if not dataset.pending:
        return dataset
    from ..planning import statistics_noise, statistics_share  # the accountant: only for tables that need it

    seed = secrets.randbits(128) if config.randomness == "release" else config.seed + STATISTICS_SEED_OFFSET
    return release_scaling(
        dataset,
        noise_multiplier=statistics_noise(config, dataset.n_train),
        rng=np.random.default_rng(seed),
        share=statistics_share(config),
        released=released,
    )


def load_run_dataset(config: "TrainConfig", released: Optional[dict]) -> Dataset:
    """The data set a stored run trained on: scaled by the statistics it stored (`RunSummary.released_scaling`),
    never by a new draw. Runs stored before the statistics were kept (None) drew them from their seed in either
    mode, so that draw is repeated for them."""
    if released is None:
        return load_config_dataset(dataclasses.replace(config, randomness="research"))
    return load_config_dataset(config, ReleasedScaling.from_dict(released))


def data_fingerprint(source: str, schema: Optional[str] = None) -> Optional[str]:
    """A digest of the bytes behind a file or folder data set and its schema (None for built-ins, which are fixed
    by name, size and split seed): a stored run is reused only while its data and schema are unchanged."""
    if source in BUILTIN:
        return None
    path = Path(source).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamps = tuple((str(p.relative_to(path) if path.is_dir() else p.name), *_stamp(p)) for p in files)
    if schema is not None:  # a schema's bounds, levels and classes change the run as much as its data
        schema_path = Path(schema).expanduser()
        if not schema_path.is_file():
            raise DataError(f"schema {schema}: no such file")
        files, stamps = [*files, schema_path], (*stamps, ("schema:" + schema_path.name, *_stamp(schema_path)))
    return _digest(tuple(files), stamps)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _digest(files: tuple[Path, ...], stamps: tuple) -> str:
    """SHA-256 of the files' names and contents (cached while their sizes and times stay the same)."""
    digest = hashlib.sha256()
    for path, (name, *_) in zip(files, stamps):
        digest.update(name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
