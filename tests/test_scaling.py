"""The preprocessing a run's ε covers: fixed scales, public bounds from a schema, released statistics composed
into ε (checked against Google's dp_accounting), classes and levels from training rows only, old runs' notes."""

import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from dpsat_core import DataError, RunStore, TrainConfig, load_dataset
from dpsat_core.cli import main
from dpsat_core.data import load_config_dataset
from dpsat_core.data.builtin import BREAST_CANCER_BOUNDS
from dpsat_core.data.dataset import Split, encode_labels, finish, split_rows
from dpsat_core.data.scaling import STATISTICS_RELEASES, bounds_transform, release_statistics

WAVE1_STORE = Path(__file__).parent / "data" / "store_wave1.db"


def write(path, text):
    path.write_text(text)
    return str(path)


def table(rows=60, *, colour=None):
    """age (numeric), colour (3 levels, or `colour` per row), score (numeric), label (yes/no)."""
    rng = np.random.default_rng(0)
    colours = colour or [["red", "green", "blue"][i % 3] for i in range(rows)]
    lines = ["age,colour,score,label"]
    for i in range(rows):
        lines.append(f"{20 + i},{colours[i]},{rng.normal() * 50:.3f},{'yes' if i % 2 else 'no'}")
    return "\n".join(lines) + "\n"


def by_row(raw, data):
    """Raw row (as bytes) → its scaled features, over every split."""
    split_raw = np.concatenate(raw)
    scaled = np.concatenate([data.x_train, data.x_val, data.x_test])
    return {r.tobytes(): s for r, s in zip(split_raw, scaled)}


def test_removing_one_training_row_changes_no_fixed_scale_preprocessing():
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    labels = np.asarray(bunch.target_names)[bunch.target]
    split = Split(0, 0.1)
    first_train_row = split_rows(encode_labels(labels, "bc")[0], split, "bc")[0][0]
    maps = {}
    for preprocessing in ("private", "fitted"):
        for drop in (None, first_train_row):
            keep = np.arange(len(labels)) != drop
            x, y = bunch.data[keep], labels[keep]
            rows = split_rows(encode_labels(y, "bc")[0], split, "bc")
            data = finish("bc", "tabular", x, y, split=split, preprocessing=preprocessing, bounds=BREAST_CANCER_BOUNDS)
            maps[preprocessing, drop] = by_row([x[r] for r in rows], data)
    for preprocessing, changed in (("private", False), ("fitted", True)):
        full, less = maps[preprocessing, None], maps[preprocessing, first_train_row]
        differs = any(not np.array_equal(full[k], less[k]) for k in less)
        assert differs == changed  # fitted scaling (earlier runs') reads the rows; the documented bounds do not
    private = load_dataset("breast_cancer", validation_fraction=0.1)
    assert private.pending == () and "documentation" in private.scaling
    assert np.abs(private.x_train).max() <= 1.0


def test_builtins_use_their_fixed_scales():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    digits = load_dataset("digits")
    train = split_rows(bunch.target, Split(0), "digits")[0]
    np.testing.assert_allclose(digits.x_train.reshape(len(train), -1), bunch.data[train] / 16, rtol=1e-6)
    for name in ("digits", "mnist1d", "synthetic"):
        data = load_dataset(name, size=300)
        assert data.pending == () and ("fixed" in data.scaling or "generated" in data.scaling)


def test_a_category_only_in_the_test_rows_does_not_change_the_input_width(tmp_path):
    labels = np.array(["yes" if i % 2 else "no" for i in range(60)])
    test_row = split_rows(encode_labels(labels, "t")[0], Split(0), "t")[2][0]
    colours = [["red", "green", "blue"][i % 3] for i in range(60)]
    colours[test_row] = "purple"
    path = write(tmp_path / "t.csv", table(colour=colours))
    private = load_dataset(path, target="label")
    fitted = load_dataset(path, target="label", preprocessing="fitted")
    assert "colour=purple" not in private.feature_names and "colour=purple" in fitted.feature_names
    plain = load_dataset(write(tmp_path / "plain.csv", table()), target="label")
    assert private.input_shape == plain.input_shape  # the test row's level is unknown: all-zero one-hot
    purple = private.x_test[list(split_rows(encode_labels(labels, "t")[0], Split(0), "t")[2]).index(test_row)]
    assert purple[1:4].tolist() == [0.0, 0.0, 0.0]


def test_a_class_no_training_row_has_is_one_clear_error(tmp_path):
    def relabelled(row):
        return np.array(["maybe" if i == row else ("yes" if i % 2 else "no") for i in range(60)])

    # a row that lands in the test set once it carries the new class (a singleton class turns stratification off)
    test_row = next(t for t in range(60) if t in split_rows(encode_labels(relabelled(t), "t")[0], Split(0), "t")[2])
    lines = table().splitlines()
    lines[1 + test_row] = lines[1 + test_row].rsplit(",", 1)[0] + ",maybe"
    path = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"label\(s\) \['maybe'\] are not among any training row"):
        load_dataset(path, target="label")
    schema = write(tmp_path / "s.json", json.dumps({"classes": ["maybe", "no", "yes"]}))
    assert load_dataset(path, target="label", schema=schema).class_names == ("maybe", "no", "yes")


def test_a_schema_gives_bounds_levels_and_classes_and_nothing_is_released(tmp_path):
    path = write(tmp_path / "t.csv", table())
    schema = {
        "columns": {"age": {"min": 0, "max": 100}, "colour": {"categories": ["blue", "green", "red", "violet"]}},
        "default": {"min": -200, "max": 200},
        "classes": ["no", "yes"],
    }
    schema_path = write(tmp_path / "s.toml", 'classes = ["no", "yes"]\n[default]\nmin = -200\nmax = 200\n'
                        '[columns.age]\nmin = 0\nmax = 100\n'
                        '[columns.colour]\ncategories = ["blue", "green", "red", "violet"]\n')  # fmt: skip
    for file in (write(tmp_path / "s.json", json.dumps(schema)), schema_path):
        data = load_dataset(path, target="label", schema=file)
        assert data.pending == () and "schema s." in data.scaling
        assert data.feature_names == ("age", "colour=blue", "colour=green", "colour=red", "colour=violet", "score")
        raw_age = np.concatenate([data.x_train[:, 0], data.x_val[:, 0], data.x_test[:, 0]])
        assert sorted(np.round((raw_age + 1) / 2 * 100).astype(int).tolist()) == list(range(20, 80))
    config = TrainConfig(dataset=path, target="label", method="dpsgd", schema=schema_path)
    assert load_config_dataset(config).statistics_noise is None  # every column bounded: no release, no ε share


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"columns": {"age": {"min": 5, "max": 1}}}', r"column 'age' needs finite numbers min < max"),
        ('{"columns": {"age": {"min": 0}}}', "column 'age' needs either min and max, or categories"),
        ('{"columns": {"nope": {"min": 0, "max": 1}}}', r"column\(s\) \['nope'\] are not in t.csv"),
        ('{"bounds": {}}', r"unknown key\(s\) \['bounds'\]"),
        ('{"classes": ["no", "no"]}', "lists a value twice"),
        ('{"columns": {"colour": {"min": 0, "max": 1}}}', "column 'colour' holds text"),
        ('{"classes": ["no"]}', "'classes' must list at least two classes"),
        ("[1, 2]", "the top level must be an object"),
    ],
)
def test_a_schema_with_bad_content_is_one_clear_error(tmp_path, content, message, capsys):
    path = write(tmp_path / "t.csv", table())
    schema = write(tmp_path / "s.json", content)
    with pytest.raises(DataError, match=message):
        load_dataset(path, target="label", schema=schema)
    code = main(
        ["train", "--dataset", path, "--target", "label", "--schema", schema, "--store", str(tmp_path / "r.db")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: schema s.json: ") and err.count("\n") == 1
    assert not (tmp_path / "r.db").exists() or not RunStore(tmp_path / "r.db").list_runs()


def test_a_schema_for_a_builtin_or_a_missing_schema_is_refused(tmp_path):
    schema = write(tmp_path / "s.json", "{}")
    with pytest.raises(DataError, match="a schema describes your own CSV or NPZ file"):
        load_dataset("digits", schema=schema)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(write(tmp_path / "t.csv", table()), target="label", schema=str(tmp_path / "none.json"))


class RecordingRng:
    """Stands in for numpy's generator: zero noise, and the noise scales asked for."""

    def __init__(self):
        self.scales = []

    def normal(self, loc, scale, size):
        self.scales.append(scale)
        return np.zeros(size)


def test_released_statistics_are_noised_to_their_sensitivity_and_exact_without_noise():
    rng = np.random.default_rng(1)
    groups = np.stack([rng.normal(1000, 50, 500), rng.normal(0, 0.01, 500), np.zeros(500)], axis=1)[:, :, None]
    recorder = RecordingRng()
    noisy = release_statistics(groups, noise_multiplier=7.0, rng=recorder)
    # one row moves one histogram count per group (√G), and two values in [−1, 1] per group (√(2G))
    assert recorder.scales == pytest.approx([7 * math.sqrt(3), 7 * math.sqrt(6), 7 * math.sqrt(6)])
    exact = release_statistics(groups, noise_multiplier=None, rng=None)
    np.testing.assert_allclose(noisy.bound, exact.bound)
    for column in (0, 1):  # twice the top of the fullest power-of-two bucket of |x|
        exponents, counts = np.unique(np.ceil(np.log2(np.abs(groups[:, column, 0]))), return_counts=True)
        assert exact.bound[column] == 2.0 ** (exponents[counts.argmax()] + 1)
    assert exact.bound[0] == 2048
    scaled = exact.apply(groups)[:, :2, 0]
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(scaled.std(0), 1, rtol=1e-6)
    assert np.isfinite(exact.apply(groups)).all()  # a constant column stays finite (std floor)


def test_bounds_that_may_sit_on_noise_are_found_and_the_run_says_so(tmp_path):
    # 10 columns at noise multiplier 26.5 (ε = 3 at 400 rows): a histogram count's noise std is 84, and the largest
    # of ~60 pure-noise buckets (~2.4 std, ~200) beats the fullest buckets of 400 rows spread over several (~120-150);
    # at 5,000 rows the fullest buckets stand far above it
    from dpsat_core.data.scaling import SETTLED_NOISE_STDS

    rng = np.random.default_rng(0)

    def columns(n):
        return np.concatenate([rng.normal(0, 1, (n, 5, 1)), rng.uniform(0, 100, (n, 5, 1))], axis=1)

    few, many = columns(400), columns(5000)
    small = release_statistics(few, noise_multiplier=26.5, rng=rng)
    large = release_statistics(many, noise_multiplier=26.5, rng=rng)
    assert small.unsettled == tuple(range(10)) and large.unsettled == ()
    exact = release_statistics(many, noise_multiplier=None, rng=None)
    assert exact.unsettled == () and np.array_equal(large.bound, exact.bound)  # settled: the noise moved no bound
    true_max = np.abs(few).max(axis=(0, 2))
    off = (small.bound / true_max > 1e3) | (small.bound / true_max < 0.05)
    assert off.any()  # what the note warns of: some bounds a thousand times off (or clipping to the sign)
    assert "unsettled" not in small.to_dict() and SETTLED_NOISE_STDS == 4.0
    # a run on a 400-row table without a schema says so in its scaling note, which its privacy note shows
    path = tmp_path / "t.csv"
    rows = [",".join(f"{v:.4f}" for v in row[:, 0]) + f",{i % 2}" for i, row in enumerate(columns(560))]
    path.write_text(",".join(f"c{j}" for j in range(10)) + ",label\n" + "\n".join(rows) + "\n")
    config = TrainConfig(dataset=str(path), target="label", method="dpsgd", epsilon=3.0, epochs=1, batch_size=64)
    scaling = load_config_dataset(config).scaling
    assert "the bounds of 10 of them (c0, c1, c2, c3, c4 and 5 more) may sit on noise rather than data" in scaling
    assert "give their public bounds in a schema" in scaling


def test_bounds_map_onto_minus_one_one_and_clip():
    assert bounds_transform(np.array([0.0, 50.0, 100.0, 150.0, -9.0]), 0, 100).tolist() == [-1, 0, 1, 1, -1]


def dp_accounting_epsilon(*, statistics_noise, noise_multiplier, sample_rate, releases, delta, accountant):
    """The same mechanisms composed by Google's dp_accounting (PLD for PRV, its own RDP for RDP)."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(statistics_noise), STATISTICS_RELEASES),
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
                releases,
            ),
        ]
    )
    theirs = pld_privacy_accountant.PLDAccountant() if accountant == "prv" else rdp_privacy_accountant.RdpAccountant()
    return theirs.compose(event).get_epsilon(delta)


def test_a_run_with_released_statistics_reports_the_composed_epsilon_of_dp_accounting(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    x = rng.normal(0, 1, (n, 2)) * [300.0, 0.02] + [1000.0, 0.0]
    y = (x[:, 0] - 1000 + 15000 * x[:, 1] > 0).astype(int)
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "".join(f"{a:.4f},{b:.6f},{c}\n" for (a, b), c in zip(x, y)))
    config = TrainConfig(dataset=str(path), target="label", method="dpsgd", epsilon=3.0, epochs=1, batch_size=64,
                         accountant="rdp", preprocessing_share=0.1)  # fmt: skip
    from dpsat_core.runner import run

    record = run(config, RunStore(tmp_path / "r.db")).record
    s = record.summary
    assert s.statistics_noise_multiplier > 1 and "covered by ε" in s.scaling
    assert "preprocessing statistics" in record.privacy_note
    theirs = dp_accounting_epsilon(
        statistics_noise=s.statistics_noise_multiplier,
        noise_multiplier=s.noise_multiplier,
        sample_rate=s.sample_rate,
        releases=s.releases,
        delta=s.delta,
        accountant="rdp",
    )
    assert s.epsilon_spent == pytest.approx(theirs, rel=1e-3)
    assert 3.0 - 0.011 <= s.epsilon_spent <= 3.0  # σ was calibrated for the rest of the budget, composed
    from dpsat_core.accounting import epsilon_spent

    training_only = epsilon_spent(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate,
                                  releases=s.releases, delta=s.delta, accountant="rdp").epsilon  # fmt: skip
    assert training_only < s.epsilon_spent  # the statistics are charged, not free


def test_prv_composition_with_released_statistics_matches_dp_accounting_pld():
    from dpsat_core.accounting import epsilon_spent

    question = dict(noise_multiplier=1.1, sample_rate=0.05, releases=300, delta=1e-5)
    ours = epsilon_spent(**question, accountant="prv", prior=((20.0, 1.0, STATISTICS_RELEASES),)).epsilon
    theirs = dp_accounting_epsilon(statistics_noise=20.0, accountant="prv", **question)
    assert ours == pytest.approx(theirs, rel=0.01)
    assert ours > epsilon_spent(**question, accountant="prv").epsilon


def test_runs_stored_before_private_scaling_keep_their_hash_and_say_their_scaling_is_not_covered(tmp_path):
    path = tmp_path / "old.db"
    shutil.copy(WAVE1_STORE, path)
    with sqlite3.connect(path) as db:
        stored = dict(db.execute("SELECT run_id, config_hash FROM runs").fetchall())
    records = RunStore(path).list_runs()
    assert {r.method for r in records} == {"dpsgd", "sgd"}
    for record in records:
        assert record.config.preprocessing == "fitted" and record.config.config_hash() == stored[record.run_id]
        # its data loads as it was trained on (analyses re-read it): standardised on the training rows
        data = load_config_dataset(record.config)
        assert abs(float(data.x_train.mean())) < 1e-5 and data.pending == ()
    dpsgd = next(r for r in records if r.method == "dpsgd")
    assert "not covered by ε" in dpsgd.privacy_note and "mean and std" in dpsgd.privacy_note
    assert TrainConfig().preprocessing == "private"


def test_breast_cancer_bounds_are_the_documented_table():
    import re

    from sklearn.datasets import load_breast_cancer

    rows = re.findall(r"^[a-z ()]+:\s+([\d.]+)\s+([\d.]+)$", load_breast_cancer().DESCR, re.MULTILINE)
    assert tuple((float(low), float(high)) for low, high in rows) == BREAST_CANCER_BOUNDS


def table_config(tmp_path, randomness: str) -> TrainConfig:
    """A private run on a table whose two numeric columns have no public bounds: their scale is released."""
    path = tmp_path / "t.csv"
    if not path.exists():
        write(path, table(rows=120))
    # σ given and RDP: the statistics' noise takes one quick calibration, training's none
    return TrainConfig(dataset=str(path), target="label", method="dpsgd", noise_multiplier=1.0, accountant="rdp",
                       epochs=1, batch_size=16, randomness=randomness)  # fmt: skip


def trained_on(monkeypatch) -> list:
    """The data sets training runs on, as `prepare` hands them to the trainer."""
    from dpsat_core import training

    seen, real = [], training.prepare

    def recording(*args, **kwargs):
        trainer = real(*args, **kwargs)
        seen.append(trainer.dataset)
        return trainer

    monkeypatch.setattr(training, "prepare", recording)
    return seen


def test_release_runs_draw_their_statistics_from_os_entropy_store_them_and_analyses_reuse_them(tmp_path, monkeypatch):
    import dataclasses
    import secrets

    from dpsat_core import load_run_model
    from dpsat_core.runner import run

    drawn, real = [], secrets.randbits
    monkeypatch.setattr(secrets, "randbits", lambda k: drawn.append(real(k)) or drawn[-1])
    seen, store = trained_on(monkeypatch), RunStore(tmp_path / "r.db")
    config = table_config(tmp_path, "release")
    a, b = (run(config, store, reuse=False).record for _ in range(2))
    stored = [r.summary.released_scaling for r in (a, b)]
    assert a.status == b.status == "done" and None not in stored and len(stored[0]["bound"]) == 2
    assert stored[0] != stored[1]  # independent draws of one mechanism
    assert [d.released.to_dict() for d in seen] == stored  # what is stored is what training scaled by
    # no stored value reproduces them: the stored seed in research mode gives another release, and the OS draws
    # appear nowhere in the store's files
    research = load_config_dataset(dataclasses.replace(a.config, randomness="research"))
    assert research.released.to_dict() not in stored
    files = b"".join(p.read_bytes() for p in tmp_path.glob("r.db*"))
    assert drawn and not any(
        form in files for v in drawn for form in (str(v).encode(), v.to_bytes(16, "little"), v.to_bytes(16, "big"))
    )
    for record, used in zip((a, b), seen):  # an analysis rebuilds exactly the rows the run trained on
        rebuilt = load_run_model(store, record.run_id, n_samples=10_000, device="cpu")
        assert np.array_equal(rebuilt.dataset.x_train, used.x_train)
        assert np.array_equal(rebuilt.x.numpy(), used.x_train) and np.array_equal(rebuilt.dataset.x_test, used.x_test)


def test_research_runs_keep_their_seeded_statistics_and_old_runs_reload_the_draw_they_trained_on(tmp_path):
    import dataclasses

    from dpsat_core.data import load_run_dataset
    from dpsat_core.runner import run

    config = table_config(tmp_path, "research")
    seeded = load_config_dataset(config)
    record = run(config, RunStore(tmp_path / "r.db")).record
    assert record.summary.released_scaling == seeded.released.to_dict()  # the seeded draw, bit for bit
    assert np.array_equal(load_config_dataset(config).x_train, seeded.x_train)
    reloaded = load_run_dataset(config, record.summary.released_scaling)
    assert np.array_equal(reloaded.x_train, seeded.x_train) and np.array_equal(reloaded.x_val, seeded.x_val)
    # runs stored before the statistics were kept drew them from their seed in either mode
    release = dataclasses.replace(config, randomness="release")
    assert np.array_equal(load_run_dataset(release, None).x_train, seeded.x_train)
    assert not np.array_equal(load_config_dataset(release).x_train, seeded.x_train)
    with pytest.raises(DataError, match="2 without public bounds: the data or its schema changed"):
        load_run_dataset(config, {"bound": [1.0], "mean": [0.0], "std": [1.0]})


def test_a_tables_class_set_and_levels_read_from_its_rows_are_said_to_be_outside_epsilon(tmp_path):
    from dpsat_core.data.dataset import ROW_DERIVED

    path = write(tmp_path / "t.csv", table())
    bare = load_dataset(path, target="label")
    assert bare.scaling.endswith(f"the class set and category levels {ROW_DERIVED}")
    schema = {"classes": ["no", "yes"], "columns": {"colour": {"categories": ["blue", "green", "red"]}}}
    listed = load_dataset(path, target="label", schema=write(tmp_path / "s.json", json.dumps(schema)))
    assert ROW_DERIVED not in listed.scaling  # the schema decided them: nothing of the rows' shape is read
    only_classes = load_dataset(path, target="label", schema=write(tmp_path / "c.json", '{"classes": ["no", "yes"]}'))
    assert only_classes.scaling == f"category levels {ROW_DERIVED}"  # no empty part joined before it
