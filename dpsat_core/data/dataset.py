"""The `Dataset` value every loader returns, and the one place data is checked, split and scaled."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..config import MAX_VALIDATION_FRACTION
from ..errors import DataError
from ..results import FITTED_SCALING
from .scaling import STATISTICS_RELEASES, ReleasedScaling, bounds_transform, release_statistics

TEST_FRACTION = 0.2
# A public bound per feature (a table column, or every pixel of an image), or None where none is known.
Bounds = Optional[Sequence[Optional[tuple[float, float]]]]


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


# What a user file's shape says when the training rows decided it (no schema lists it): ε does not cover it.
ROW_DERIVED = "read from the training rows, which ε does not cover (list them in a schema)"


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
    scaling: str = FITTED_SCALING  # how the features were scaled, and whether a run's ε covers it
    # Feature groups (table columns, or image channels) still raw: their scale is released with noise per run
    # (`load_config_dataset`), so a Dataset with pending groups is not ready to train on.
    pending: tuple[int, ...] = ()
    # The noise multiplier of the scaling statistics released for a private run (None: nothing released).
    statistics_noise: Optional[float] = None
    # digest of the file bytes it was read from (None for built-ins): travels with the data, so a run trained
    # where the file is absent (a Ray worker) still records what it was trained on
    fingerprint: Optional[str] = None
    # The statistics that scaled the pending groups (None: nothing released), stored with the run
    released: Optional[ReleasedScaling] = None

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
            "scaling": self.scaling,
            "pending": len(self.pending),
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
    preprocessing: str = "private",
    fixed: str = "",
    bounds: Bounds = None,
    classes: Optional[Sequence[str]] = None,
    rows: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
    bounds_source: str = "",
) -> Dataset:
    """Validate, encode labels, split off a test set (stratified, by the split's seed) unless one is given,
    hold out the split's validation fraction of the training rows (same seed), and scale.

    `preprocessing="fitted"` is what every earlier version did (`FITTED_NOTE`). "private" reads nothing from the
    rows to scale: `fixed` describes a data-independent scale already applied to `x`; else numeric columns
    (`standardize` True, or every feature) with public `bounds` (from `bounds_source`) map to [−1, 1] and the
    others stay raw, pending a noisy release; classes are `classes` (a schema's) or the training rows'.
    `rows` gives the (train, validation, test) row indices when the caller split first (to encode on them)."""
    if len(x) == 0:
        raise DataError(f"{name}: no examples found")
    if len(x) != len(labels):
        raise DataError(f"{name}: {len(x)} examples but {len(labels)} labels")
    x = _check_features(np.asarray(x), name)
    if preprocessing == "private":
        return _finish_private(
            name,
            kind,
            x,
            np.asarray(labels),
            split=split,
            test=test,
            feature_names=feature_names,
            numeric=standardize,
            fixed=fixed,
            bounds=bounds,
            classes=classes,
            rows=rows,
            bounds_source=bounds_source,
        )
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


def split_rows(codes: np.ndarray, split: Split, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of (train, validation, test): the rows `finish` has always drawn for these label codes."""
    if len(codes) < 10:
        raise DataError(f"{name}: only {len(codes)} examples; at least 10 are needed to train and test")
    train, test, train_codes, _ = _split(np.arange(len(codes)), codes, TEST_FRACTION, split.seed)
    train, val = _validation_rows(train, train_codes, split, name)
    return train, val, test


def _validation_rows(rows: np.ndarray, codes: np.ndarray, split: Split, name: str) -> tuple[np.ndarray, np.ndarray]:
    fraction = split.validation_fraction
    if not fraction:
        return rows, rows[:0]
    if len(rows) - math.ceil(fraction * len(rows)) < 2:
        raise DataError(
            f"{name}: {len(rows)} training examples are too few to hold out a validation fraction of "
            f"{fraction:g}: use 0 (no validation set) or more data"
        )
    train, val, _, _ = _split(rows, codes, fraction, split.seed)
    return train, val


def _class_codes(
    labels: np.ndarray, train: np.ndarray, classes: Optional[Sequence[str]], name: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes of every row over the schema's `classes`, or over the classes of the training rows `train` only: a
    label no training row has (or the schema lacks) is an error, never a new output of the model."""
    codes, names = encode_labels(labels, name)
    known = tuple(classes) if classes is not None else tuple(names[c] for c in np.unique(codes[train]))
    if len(known) < 2:
        raise DataError(f"{name}: the training rows hold only class {known[0] if known else 'none'}: need ≥ 2")
    index = {c: i for i, c in enumerate(known)}
    unseen = sorted({names[c] for c in np.unique(codes)} - set(index))
    if unseen:
        where = "the schema's classes" if classes is not None else "any training row"
        raise DataError(
            f"{name}: label(s) {unseen[:5]} are not among {where}: "
            + ("add them to 'classes'" if classes is not None else "drop those rows, or list every class in a schema")
        )
    return np.array([index[names[c]] for c in codes], dtype=np.int64), known


def _finish_private(
    name: str,
    kind: str,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    split: Split,
    test: Optional[tuple[np.ndarray, np.ndarray]],
    feature_names: Sequence[str],
    numeric: Optional[np.ndarray],
    fixed: str,
    bounds: Bounds,
    classes: Optional[Sequence[str]],
    rows: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]],
    bounds_source: str,
) -> Dataset:
    if test is not None:
        x_test_raw = _check_features(np.asarray(test[0]), f"{name} (test)")
        all_labels = np.concatenate([labels, np.asarray(test[1])])
        given = np.arange(len(x))
        train, val = _validation_rows(given, encode_labels(labels, name)[0], split, name)
        codes, class_names = _class_codes(all_labels, train, classes, name)
        x_all, test_rows = np.concatenate([x, x_test_raw]), np.arange(len(x), len(all_labels))
    else:
        train, val, test_rows = rows if rows is not None else split_rows(encode_labels(labels, name)[0], split, name)
        codes, class_names = _class_codes(labels, train, classes, name)
        x_all = x
    parts = [x_all[train], x_all[val], x_all[test_rows]]
    note, pending = fixed, ()
    if not fixed:
        parts, note, pending = _public_bounds(parts, kind, numeric, bounds, bounds_source)
    x_train, x_val, x_test = (p.astype(np.float32) for p in parts)
    y_train, y_val, y_test = codes[train], codes[val], codes[test_rows]
    _freeze(x_train, x_val, x_test, y_train, y_val, y_test)
    return Dataset(
        name, kind, x_train, y_train, x_test, y_test, class_names, tuple(feature_names), x_val, y_val, note, pending
    )


def _public_bounds(
    parts: list[np.ndarray], kind: str, numeric: Optional[np.ndarray], bounds: Bounds, source: str
) -> tuple[list[np.ndarray], str, tuple[int, ...]]:
    """Scale the features that have public bounds to [−1, 1]; the other numeric groups (table columns, image
    channels) are left raw and returned as pending. One-hot columns stay 0/1."""
    if kind == "image":  # one bound for every pixel, or the channels are pending
        bound = bounds[0] if bounds else None
        if bound is None:
            return parts, "", tuple(range(parts[0].shape[1]))
        return (
            [bounds_transform(p, *bound) for p in parts],
            f"pixels mapped from public bounds in {source} to [−1, 1]",
            (),
        )
    width = parts[0].shape[1]
    numeric = np.ones(width, bool) if numeric is None else np.asarray(numeric, bool)
    bounds = list(bounds) if bounds is not None else [None] * width
    scaled = [p.astype(np.float64, copy=True) for p in parts]
    for column in np.flatnonzero(numeric):
        if bounds[column] is not None:
            for p in scaled:
                p[:, column] = bounds_transform(p[:, column], *bounds[column])
    pending = tuple(int(c) for c in np.flatnonzero(numeric) if bounds[c] is None)
    bounded = int(numeric.sum()) - len(pending)
    note = f"{bounded} numeric column(s) mapped from public bounds in {source} to [−1, 1]" if bounded else ""
    return scaled, note, pending


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


def _group_name(dataset: Dataset, index: int) -> str:
    """A pending feature group as a user knows it: its column name, or 'channel i' of an image."""
    if dataset.kind == "image" or index >= len(dataset.feature_names):
        return f"channel {index}"
    return dataset.feature_names[index]


def release_scaling(
    dataset: Dataset,
    *,
    noise_multiplier: Optional[float],
    rng: np.random.Generator,
    share: str,
    released: Optional[ReleasedScaling] = None,
) -> Dataset:
    """The data set with its pending groups scaled by statistics released from its training rows (noise
    multiplier `noise_multiplier` drawn from `rng`, or none for a non-private run; `share` says what ε part they
    take), or by `released`, statistics a stored run released before (no new draw, nothing read from the rows)."""
    if not dataset.pending:
        return dataset
    pending = list(dataset.pending)

    def groups(x: np.ndarray) -> np.ndarray:  # the width is explicit: an empty split (no validation rows) has none
        chosen = x[:, pending]
        return chosen.reshape(len(x), len(pending), math.prod(chosen.shape[2:])).astype(np.float64)

    if released is None:
        release = release_statistics(groups(dataset.x_train), noise_multiplier=noise_multiplier, rng=rng)
    elif released.bound.shape == (len(pending),):
        release = released
    else:
        raise DataError(
            f"{dataset.name}: the run stored scaling statistics for {len(released.bound)} feature group(s), the "
            f"data now has {len(pending)} without public bounds: the data or its schema changed since the run"
        )
    parts = []
    for x in (dataset.x_train, dataset.x_val, dataset.x_test):
        out = x.astype(np.float32, copy=True)
        out[:, pending] = release.apply(groups(x)).reshape(out[:, pending].shape)
        parts.append(out)
    _freeze(*parts)
    what = f"{len(pending)} {'channel' if dataset.kind == 'image' else 'numeric column'}(s)"
    if noise_multiplier is None:
        released = f"{what} scaled by statistics of the training rows without noise (a non-private run: no ε)"
    else:
        released = (
            f"{what} scaled by statistics released from the training rows with Gaussian noise "
            f"({STATISTICS_RELEASES} releases at noise multiplier {noise_multiplier:.3g}, {share}; covered by ε)"
        )
        if release.unsettled:  # known only where the statistics were drawn now, not for a stored run's
            names = [_group_name(dataset, pending[g]) for g in release.unsettled]
            which = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            released += (
                f"; the bounds of {len(names)} of them ({which}) may sit on noise rather than data (few rows for "
                "this share of ε, or values spread over many magnitudes; where so, the feature is crushed to ~0 or "
                "clipped to its sign): give their public bounds in a schema, or raise ε or the preprocessing share"
            )
    note = "; ".join(n for n in (dataset.scaling, released) if n)
    return dataclasses.replace(
        dataset,
        x_train=parts[0],
        x_val=parts[1],
        x_test=parts[2],
        scaling=note,
        pending=(),
        statistics_noise=noise_multiplier,
        released=release,
    )
