"""The `Dataset` value every loader returns, and the one place data is checked, split and scaled."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..config import MAX_VALIDATION_FRACTION
from ..errors import DataError

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """How a data set is divided: the seed of its test and validation draws, and the share of the
    training rows held out for validation (0: none)."""

    seed: int = 0
    validation_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int):
            raise DataError(f"split seed must be a whole number, got {self.seed!r}")
        if not (
            isinstance(self.validation_fraction, (int, float))
            and 0 <= self.validation_fraction <= MAX_VALIDATION_FRACTION
        ):
            raise DataError(
                f"validation fraction must be in [0, {MAX_VALIDATION_FRACTION}], got {self.validation_fraction!r}"
            )


@dataclass(frozen=True, eq=False)
class Dataset:
    """Standardised train/validation/test arrays: images are (n, C, H, W), tabular rows are (n, d).

    Training sees only the train split; validation accuracy is for choosing ρ, lr or C, and test
    accuracy is what verdicts report (so the choice does not flatter the reported number)."""

    name: str
    kind: str  # "image" or "tabular"
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    x_val: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    y_val: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    # digest of the file bytes it was read from (None for built-ins): travels with the data, so a run trained
    # where the file is absent (a Ray worker) still records what it was trained on
    fingerprint: Optional[str] = None

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict:
        """A short summary for pages, reports and the CLI."""
        return {
            "name": self.name,
            "kind": self.kind,
            "n_train": self.n_train,
            "n_validation": self.n_val,
            "n_test": len(self.y_test),
            "n_classes": self.n_classes,
            "input_shape": list(self.input_shape),
            "class_counts": np.bincount(self.y_train, minlength=self.n_classes).tolist(),
        }


def encode_labels(labels: np.ndarray, source: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map any label values to 0..k-1 (sorted), rejecting missing labels and single-class data."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{source}: labels must be one value per example, got shape {labels.shape}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(
            f"{source}: {int((~np.isfinite(labels)).sum())} labels are missing (NaN): fill or drop those rows"
        )
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    values, codes = np.unique(labels, return_inverse=True)
    if len(values) < 2:
        raise DataError(
            f"{source}: every example has the same label ({values[0] if len(values) else 'none'}): "
            "a classifier needs ≥ 2 classes"
        )
    return codes.astype(np.int64), tuple(str(v) for v in values)


def _check_features(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: features must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])[:5] + 1
        raise DataError(
            f"{source}: {int(bad.sum())} feature values are NaN or infinite (first rows: {rows.tolist()}): "
            "fill or drop them"
        )
    return x


def _scale(
    train: np.ndarray, others: Sequence[np.ndarray], kind: str, columns: Optional[np.ndarray]
) -> list[np.ndarray]:
    """Standardise with training statistics only: per channel for images, per column for tables."""
    if kind == "image":
        axes = (0, 2, 3)
        mean, std = train.mean(axis=axes, keepdims=True), train.std(axis=axes, keepdims=True)
    else:
        mean, std = train.mean(axis=0), train.std(axis=0)
        if columns is not None:  # leave one-hot columns as 0/1
            mean, std = np.where(columns, mean, 0.0), np.where(columns, std, 1.0)
    std = np.where(std < 1e-8, 1.0, std)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _freeze(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def finish(
    name: str,
    kind: str,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    split: Split,
    test: Optional[tuple[np.ndarray, np.ndarray]] = None,
    feature_names: Sequence[str] = (),
    standardize: Optional[np.ndarray] = None,
) -> Dataset:
    """Validate, encode labels, split off a test set (stratified, by the split's seed) unless one is given,
    hold out the split's validation fraction of the training rows (same seed), and scale."""
    if len(x) == 0:
        raise DataError(f"{name}: no examples found")
    if len(x) != len(labels):
        raise DataError(f"{name}: {len(x)} examples but {len(labels)} labels")
    x = _check_features(np.asarray(x), name)
    if test is None:
        y, class_names = encode_labels(labels, name)
        if len(y) < 10:
            raise DataError(f"{name}: only {len(y)} examples; at least 10 are needed to train and test")
        x_train, x_test, y_train, y_test = _split(x, y, TEST_FRACTION, split.seed)
    else:
        x_test_raw = _check_features(np.asarray(test[0]), f"{name} (test)")
        all_labels = np.concatenate([np.asarray(labels), np.asarray(test[1])])
        codes, class_names = encode_labels(all_labels, name)
        x_train, x_test, y_train, y_test = x, x_test_raw, codes[: len(x)], codes[len(x) :]
    x_val, y_val = x_train[:0], y_train[:0]
    fraction = split.validation_fraction
    if fraction:
        held = math.ceil(fraction * len(y_train))  # as scikit-learn rounds a fractional test_size
        if len(y_train) - held < 2:
            raise DataError(
                f"{name}: {len(y_train)} training examples are too few to hold out a validation fraction of "
                f"{fraction:g}: use 0 (no validation set) or more data"
            )
        x_train, x_val, y_train, y_val = _split(x_train, y_train, fraction, split.seed)
    x_train, x_val, x_test = _scale(x_train, (x_val, x_test), kind, standardize)
    y_train, y_val, y_test = (a.astype(np.int64) for a in (y_train, y_val, y_test))
    _freeze(x_train, x_val, x_test, y_train, y_val, y_test)
    return Dataset(name, kind, x_train, y_train, x_test, y_test, class_names, tuple(feature_names), x_val, y_val)


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> list[np.ndarray]:
    """A seeded split holding out ⌈fraction·n⌉ rows, stratified by class where every class has two examples.
    The fraction goes to scikit-learn as given: with no validation share this is the split of every
    earlier version, row for row, so runs stored before the validation split are reproduced exactly."""
    from sklearn.model_selection import train_test_split  # 0.45 s to import: only when splitting

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    if stratify is not None and math.ceil(fraction * len(y)) < np.count_nonzero(counts):
        stratify = None  # too few held out to hold one of each class
    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)
