"""Built-in data sets, generated or read from installed packages: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, Split, finish

DEFAULT_SIZES = {"mnist1d": 4000, "synthetic": 2000}
# Public bounds of breast_cancer's 30 features, in scikit-learn's order: the "Min Max" table of the data set's
# documentation (`load_breast_cancer().DESCR`). They are public because they are published, not because they
# are independent of the data: its publishers computed them on the same 569 rows.
BREAST_CANCER_BOUNDS = (
    (6.981, 28.11), (9.71, 39.28), (43.79, 188.5), (143.5, 2501.0), (0.053, 0.163),
    (0.019, 0.345), (0.0, 0.427), (0.0, 0.201), (0.106, 0.304), (0.05, 0.097),
    (0.112, 2.873), (0.36, 4.885), (0.757, 21.98), (6.802, 542.2), (0.002, 0.031),
    (0.002, 0.135), (0.0, 0.396), (0.0, 0.053), (0.008, 0.079), (0.001, 0.03),
    (7.93, 36.04), (12.02, 49.54), (50.41, 251.2), (185.2, 4254.0), (0.071, 0.223),
    (0.027, 1.058), (0.0, 1.252), (0.0, 0.291), (0.156, 0.664), (0.055, 0.208),
)  # fmt: skip
SYNTHETIC_SCALE = 2.0  # make_classification's features: std ≈ √2 (informative) to ≈ 2.6 (redundant), by construction


def digits(*, size: int | None, split: Split, preprocessing: str) -> Dataset:
    """scikit-learn's 1,797 8×8 handwritten digits, as 1-channel images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    fixed = "fixed scale: pixel values (0–16) / 16, independent of the data"
    return finish("digits", "image", x, bunch.target, split=split, preprocessing=preprocessing, fixed=fixed)


def breast_cancer(*, size: int | None, split: Split, preprocessing: str) -> Dataset:
    """scikit-learn's Wisconsin breast cancer table: 569 rows, 30 numeric features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    labels = np.asarray(bunch.target_names)[bunch.target]
    return finish(
        "breast_cancer",
        "tabular",
        bunch.data,
        labels,
        split=split,
        feature_names=list(bunch.feature_names),
        preprocessing=preprocessing,
        bounds=BREAST_CANCER_BOUNDS,
        classes=tuple(sorted(str(c) for c in bunch.target_names)),
        bounds_source="scikit-learn's documentation of the data set (ranges its publishers computed on its rows)",
    )


def mnist1d(*, size: int | None, split: Split, preprocessing: str) -> Dataset:
    """MNIST-1D (Greydanus 2020) made by its generator: 40-sample 1D signals, 10 classes."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = size or DEFAULT_SIZES["mnist1d"]
    args.seed = 42 + split.seed
    data = make_dataset(args)  # never `get_dataset`, which downloads
    return finish(
        "mnist1d",
        "tabular",
        data["x"],
        data["y"],
        split=split,
        test=(data["x_test"], data["y_test"]),
        preprocessing=preprocessing,
        fixed=(
            "as generated: mnist1d standardises the synthetic set it generates "
            "(its own rows, drawn from a public generator, not user data)"
        ),
    )


def synthetic(*, size: int | None, split: Split, preprocessing: str) -> Dataset:
    """scikit-learn's make_classification: 20 features (10 informative), 4 classes."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=size or DEFAULT_SIZES["synthetic"],
        n_features=20,
        n_informative=10,
        n_redundant=4,
        n_classes=4,
        class_sep=1.0,
        random_state=split.seed,
    )
    if preprocessing == "private":
        x = x / SYNTHETIC_SCALE
    fixed = f"fixed scale: features / {SYNTHETIC_SCALE:g} (the generator's scale), independent of the data"
    return finish("synthetic", "tabular", x, y, split=split, preprocessing=preprocessing, fixed=fixed)


BUILTIN = {"digits": digits, "breast_cancer": breast_cancer, "mnist1d": mnist1d, "synthetic": synthetic}
