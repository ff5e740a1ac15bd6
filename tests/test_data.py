"""Every loader on files the test writes, and a clear error for each kind of bad input."""

import gzip
import os
import pickle
import re
import tracemalloc
import zipfile

import numpy as np
import pytest

from dpsat_core import DataError, load_dataset
from dpsat_core.data import files


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def table(rows=40):
    rng = np.random.default_rng(0)
    lines = ["age,colour,score,label"]
    for i in range(rows):
        lines.append(f"{20 + i},{['red', 'green', 'blue'][i % 3]},{rng.normal():.3f},{'yes' if i % 2 else 'no'}")
    return "\n".join(lines) + "\n"


def test_csv_standardises_numbers_and_one_hot_encodes_categories(tmp_path):  # fitted: how earlier runs scaled
    data = load_dataset(write_csv(tmp_path / "t.csv", table()), target="label", preprocessing="fitted")
    assert data.kind == "tabular" and data.class_names == ("no", "yes")
    assert data.feature_names == ("age", "colour=blue", "colour=green", "colour=red", "score")
    assert data.n_train == 32 and len(data.y_test) == 8
    np.testing.assert_allclose(data.x_train[:, [0, 4]].mean(0), 0, atol=1e-5)
    assert set(np.unique(data.x_train[:, 1:4])) == {0.0, 1.0}


@pytest.mark.parametrize(
    "body, target, message",
    [
        (
            "age,label\n1,a\nx,b\n" + "3,a\n" * 20,
            "label",
            "column 'age' is numeric but holds text in 1 row (row 2, e.g.",
        ),
        ("age,label\n1,a\n,b\n" + "3,b\n" * 20, "label", "column 'age' has 1 missing value (row 2)"),
        ("age,label\n" + "1,a\n" * 20, "label", "same label"),
        ("age,label\n" + "1,a\n2,b\n" * 10, "lbl", "no column 'lbl'"),
        ("age,label\n" + "1,a\n2,b\n" * 10, None, "name the label column"),
        ("age,label\n", "label", "has a header but no rows"),
        ("name,label\n" + "".join(f"person{i},{i % 2}\n" for i in range(60)), "label", "free text"),
        ("age,label\n1,\n,\n" + "1,a\n2,b\n" * 10, "label", "has 2 missing labels (rows 1, 2)"),
        ("age,label\n" + "x,a\n" * 6 + "1,a\n2,b\n" * 10, "label", "holds text in 6 rows (rows 1, 2, 3, 4, 5, …"),
    ],
)
def test_csv_errors_say_what_and_where(tmp_path, body, target, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(write_csv(tmp_path / "bad.csv", body), target=target)


@pytest.mark.parametrize(
    "raw, message",
    [
        (bytes(range(128, 256)) * 4, r"is not UTF-8 text \(it holds byte 0x80\): save it as a UTF-8 CSV"),
        ("age,label\n".encode() + "é,1\n".encode("latin-1") * 20, r"is not UTF-8 text \(it holds byte 0xe9\)"),
        (b"\n\n\n", r"is empty \(no header row\)"),
        (b'a,b\n1,2\n"3,4\n', "is not a readable CSV"),
    ],
)
def test_binary_non_utf8_blank_and_broken_csv_files_are_one_clear_error(tmp_path, raw, message):
    path = tmp_path / "odd.csv"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path), target="label")
    with pytest.raises(DataError, match=message):  # the Data page's preview reads through the same function
        files.read_csv(path, rows=8)


def test_a_path_with_a_nul_byte_is_a_clear_error():
    with pytest.raises(DataError, match="contains a NUL byte"):
        load_dataset("data\x00.csv", target="label")


def test_a_table_without_a_schema_says_what_its_rows_decided_with_no_empty_part(tmp_path):
    import dataclasses

    from dpsat_core.data.dataset import ROW_DERIVED, release_scaling
    from tests.factories import record

    bare = load_dataset(write_csv(tmp_path / "t.csv", table()), target="label")
    assert bare.scaling == f"the class set and category levels {ROW_DERIVED}"
    rng = np.random.default_rng(0)
    released = release_scaling(bare, noise_multiplier=2.0, rng=rng, share="its share of ε").scaling  # no validation
    assert released.startswith("the class set and category levels") and "; 2 numeric column(s) scaled" in released
    # a run stored with the broken note ("; the class set …") reads without the empty part
    run = record("dpsgd", 3.0, 0, 0.8)
    stored = dataclasses.replace(run.summary, scaling=f"; {released}", statistics_noise_multiplier=2.0)
    note = dataclasses.replace(run, config=dataclasses.replace(run.config, preprocessing="private"), summary=stored)
    assert (
        note.privacy_note
        == f"ε covers the training's noisy gradient releases and the preprocessing statistics: {released}."
    )


def test_empty_and_oversized_files_are_refused(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="is empty"):
        load_dataset(write_csv(tmp_path / "empty.csv", ""), target="y")
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match="the limit is"):
        load_dataset(write_csv(tmp_path / "big.csv", table()), target="label")


def test_npz_tabular_and_channels_last_images(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "tab.npz", x=rng.normal(size=(50, 6)), y=np.arange(50) % 3)
    tab = load_dataset(str(tmp_path / "tab.npz"))
    assert tab.kind == "tabular" and tab.input_shape == (6,) and tab.n_classes == 3
    np.savez(tmp_path / "img.npz", x=rng.integers(0, 255, size=(40, 12, 12, 3)), y=np.arange(40) % 2)
    img = load_dataset(str(tmp_path / "img.npz"))
    assert img.kind == "image" and img.input_shape == (3, 12, 12)


def _npz_with_header(path, shape, descr="<f8", payload=b""):
    """An .npz whose x.npy declares `shape` but holds only `payload` (what a crafted archive can do)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
            f.write(payload)
        with archive.open("y.npy", "w") as f:
            np.save(f, np.arange(10) % 2)
    return str(path)


def test_an_npz_bomb_is_refused_from_its_declared_sizes_before_anything_is_unpacked(tmp_path, monkeypatch):
    # the real cap: a header declaring 2^40 doubles (8 TiB) is refused without reading any data
    with pytest.raises(DataError, match="declare 8,388,608 MiB unpacked; the limit is 512 MiB"):
        load_dataset(_npz_with_header(tmp_path / "huge.npz", (2**40,)))
    # a real bomb: 64 MiB of zeros compressed to ~64 KB, refused without holding them
    monkeypatch.setattr(files, "MAX_DATA_BYTES", 1024**2)
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((8192, 1024)), y=np.arange(8192) % 2)
    assert (tmp_path / "bomb.npz").stat().st_size < 1024**2
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="declare 64 MiB unpacked; the limit is 1 MiB"):
            load_dataset(str(tmp_path / "bomb.npz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(os.urandom(2000)), r"is not an NPZ file \(numpy.savez writes a zip"),
        (lambda p: np.save(open(p, "wb"), np.zeros(3)), "is not an NPZ file"),  # a bare .npy named .npz
        (lambda p: np.savez(p, x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10)), "holds Python objects"),
        (lambda p: _npz_with_header(p, (10, 2), payload=b"\x00" * 8), "is not a readable NPZ"),  # truncated data
    ],
)
def test_npz_files_that_are_not_arrays_of_numbers_are_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(path))
    assert "allow_pickle" not in str(info.value)  # numpy's advice to load untrusted pickles never leaks through


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "keys.npz", a=np.zeros((10, 2)), y=np.zeros(10))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load_dataset(str(tmp_path / "keys.npz"))
    x = np.ones((20, 2))
    x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 2)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset(str(tmp_path / "nan.npz"))


def _idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_like_mnist(tmp_path, compress):
    rng = np.random.default_rng(2)
    suffix = ".gz" if compress else ""
    _idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 255, (30, 28, 28)), compress)
    _idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(30) % 10, compress)
    _idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 255, (10, 28, 28)), compress)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(10) % 10, compress)
    data = load_dataset(str(tmp_path))
    assert data.kind == "image" and data.input_shape == (1, 28, 28) and data.n_train == 30 and len(data.y_test) == 10


def test_idx_with_a_wrong_header_is_refused(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        load_dataset(str(tmp_path))


def _mnist_folder(folder, images: bytes, *, suffix: str = "") -> str:
    """An MNIST-style folder whose training images file holds `images`; the other three files are valid."""
    rng = np.random.default_rng(3)
    (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
    _idx(folder / "train-labels-idx1-ubyte", np.arange(30) % 10, False)
    _idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 28, 28)), False)
    _idx(folder / "t10k-labels-idx1-ubyte", np.arange(10) % 10, False)
    return str(folder)


def _truncated_gzip() -> bytes:
    whole = gzip.compress(bytes([0, 0, 8, 3]) + np.random.default_rng(4).bytes(4000))
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    "images, suffix, message",
    [
        (bytes([0, 0, 8, 3, 0, 0]), "", r"the IDX header is cut short \(6 bytes; 16 are needed\)"),
        (
            bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4]),
            "",
            "an IDX file of 3 dimensions was expected; its header says 1",
        ),
        (_truncated_gzip(), ".gz", "is not a complete gzip file"),
        (b"not gzip at all", ".gz", "is not a complete gzip file"),
    ],
)
def test_damaged_idx_files_are_one_clear_error(tmp_path, images, suffix, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_mnist_folder(tmp_path, images, suffix=suffix))


def test_a_gzip_that_unpacks_beyond_the_cap_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_DATA_BYTES", 1024**2)
    bomb = gzip.compress(bytes([0, 0, 8, 3]) + bytes(16 * 1024**2))  # 16 MiB of zeros in ~16 KB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="unpacks to more than 1 MiB"):
            load_dataset(_mnist_folder(tmp_path, bomb, suffix=".gz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2  # never held the 16 MiB it would unpack to


def _cifar(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
    path.write_bytes(pickle.dumps(batch))


def test_cifar_batches_in_their_usual_subfolder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _cifar(folder / "data_batch_1", 20, 0)
    _cifar(folder / "data_batch_2", 20, 1)
    _cifar(folder / "test_batch", 10, 2)
    data = load_dataset(str(tmp_path))
    assert data.input_shape == (3, 32, 32) and data.n_train == 40 and data.n_classes == 10


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _protocol_9(payload) -> bytes:
    raw = bytearray(pickle.dumps(payload, protocol=5))
    raw[1] = 9  # the PROTO opcode's argument
    return bytes(raw)


@pytest.mark.parametrize(
    "batch, message",
    [
        (pickle.dumps({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}), "'data' must be n rows of 3072"),
        (pickle.dumps({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0] * 4}), "5 images but 'labels'"),
        (pickle.dumps({b"images": 1}), "has no 'data' and 'labels'"),
        (pickle.dumps([1, 2, 3]), "has no 'data' and 'labels'"),
        (_protocol_9({b"data": 1}), "unsupported pickle protocol: 9"),
        (b"\x80\x04garbage", "is not a CIFAR-10 python batch"),
    ],
)
def test_malformed_cifar_batches_are_one_clear_error(tmp_path, batch, message):
    (tmp_path / "data_batch_1").write_bytes(batch)
    _cifar(tmp_path / "test_batch", 10, 2)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    _cifar(tmp_path / "test_batch", 10, 2)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize(
    "name, kind, shape, classes",
    [
        ("digits", "image", (1, 8, 8), 10),
        ("breast_cancer", "tabular", (30,), 2),
        ("mnist1d", "tabular", (40,), 10),
        ("synthetic", "tabular", (20,), 4),
    ],
)
def test_builtin_data_sets(name, kind, shape, classes):
    data = load_dataset(name, size=500 if name in ("mnist1d", "synthetic") else None)
    assert (data.kind, data.input_shape, data.n_classes) == (kind, shape, classes)
    assert data.x_train.dtype == np.float32 and not data.x_train.flags.writeable


def test_splits_are_deterministic_by_seed():
    a, b = load_dataset("digits", split_seed=5), load_dataset("digits", split_seed=5)
    c = load_dataset("digits", split_seed=6)
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    assert load_dataset("mnist1d", size=300, split_seed=1).n_train == 240


def test_the_validation_split_is_held_out_of_training_and_leaves_the_test_set_alone(tmp_path):
    path = tmp_path / "ids.npz"  # one unique feature per row, so rows can be followed through the split
    np.savez(path, x=np.arange(200, dtype=np.float64).reshape(-1, 1) * 3 + 7, y=np.arange(200) % 2)
    plain = load_dataset(str(path), split_seed=3)
    held = load_dataset(str(path), split_seed=3, validation_fraction=0.25)
    again = load_dataset(str(path), split_seed=3, validation_fraction=0.25)
    assert (plain.n_train, plain.n_val, len(plain.y_test)) == (160, 0, 40)
    assert (held.n_train, held.n_val, len(held.y_test)) == (120, 40, 40)
    assert np.array_equal(held.x_val, again.x_val)  # fixed by the split seed
    # same test rows whatever the validation share
    ids = {"plain": _row_ids(plain), "held": _row_ids(held)}
    assert ids["plain"]["test"] == ids["held"]["test"]
    assert ids["held"]["train"] | ids["held"]["val"] == ids["plain"]["train"]
    assert not ids["held"]["train"] & ids["held"]["val"] and len(ids["held"]["val"]) == 40
    # both classes in the validation set (stratified); fitted scaling (earlier runs') splits the same rows and
    # standardises with training rows only
    assert set(held.y_val.tolist()) == {0, 1}
    fitted = load_dataset(str(path), split_seed=3, validation_fraction=0.25, preprocessing="fitted")
    assert _row_ids(fitted) == ids["held"] and held.pending == (0,) and fitted.pending == ()
    assert abs(fitted.x_train.mean()) < 1e-5 and abs(fitted.x_train.std() - 1) < 1e-5


def _row_ids(data) -> dict[str, set[int]]:
    """Each split's original row numbers: one affine scaling maps the ids 0..199 (x = 3·id + 7) into
    every split of a data set, so an id is its value's rank among all rows."""
    parts = {"train": data.x_train[:, 0], "val": data.x_val.reshape(-1), "test": data.x_test[:, 0]}
    ranks = np.empty(200, dtype=int)
    ranks[np.argsort(np.concatenate(list(parts.values())))] = np.arange(200)
    out, start = {}, 0
    for name, values in parts.items():
        out[name] = set(ranks[start : start + len(values)].tolist())
        start += len(values)
    return out


def test_without_a_validation_share_the_split_is_row_for_row_the_one_earlier_versions_made():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()  # 1,797 rows: 0.2·n is not whole, where a rounding change would show
    for seed in (0, 3):
        _, _, y_train, y_test = train_test_split(
            bunch.data, bunch.target, test_size=0.2, random_state=seed, stratify=bunch.target
        )
        data = load_dataset("digits", split_seed=seed, validation_fraction=0.0)
        assert np.array_equal(data.y_test, y_test) and np.array_equal(data.y_train, y_train)
        held = load_dataset("digits", split_seed=seed, validation_fraction=0.1)
        assert np.array_equal(held.y_test, y_test) and (held.n_train, held.n_val) == (1293, 144)


def test_bad_validation_fractions_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"validation fraction must be in \[0, 0.5\]"):
        load_dataset("digits", validation_fraction=0.7)
    from dpsat_core.data import Split
    from dpsat_core.data.dataset import finish

    x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 0])  # 3 training rows beside a given test set
    with pytest.raises(DataError, match="3 training examples are too few to hold out a validation fraction of 0.5"):
        finish("tiny", "tabular", x, y, split=Split(0, 0.5), test=(x, y))


def test_unknown_names_and_file_types(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar100'"):
        load_dataset("cifar100")
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DataError, match="unsupported file type .parquet"):
        load_dataset(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match="neither MNIST-style IDX"):
        load_dataset(str(tmp_path))
