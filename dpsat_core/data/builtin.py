"""Built-in data sets, generated or read from installed packages: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, Split, finish

DEFAULT_SIZES = {"mnist1d": 4000, "synthetic": 2000}


def digits(*, size: int | None, split: Split) -> Dataset:
    """scikit-learn's 1,797 8×8 handwritten digits, as 1-channel images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    return finish("digits", "image", x, bunch.target, split=split)


def breast_cancer(*, size: int | None, split: Split) -> Dataset:
    """scikit-learn's Wisconsin breast cancer table: 569 rows, 30 numeric features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    labels = np.asarray(bunch.target_names)[bunch.target]
    return finish("breast_cancer", "tabular", bunch.data, labels, split=split, feature_names=list(bunch.feature_names))


def mnist1d(*, size: int | None, split: Split) -> Dataset:
    """MNIST-1D (Greydanus 2020) made by its generator: 40-sample 1D signals, 10 classes."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = size or DEFAULT_SIZES["mnist1d"]
    args.seed = 42 + split.seed
    data = make_dataset(args)  # never `get_dataset`, which downloads
    return finish("mnist1d", "tabular", data["x"], data["y"], split=split, test=(data["x_test"], data["y_test"]))


def synthetic(*, size: int | None, split: Split) -> Dataset:
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
    return finish("synthetic", "tabular", x, y, split=split)


BUILTIN = {"digits": digits, "breast_cancer": breast_cancer, "mnist1d": mnist1d, "synthetic": synthetic}
