import gzip
import json
import math
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dpsat_core import RunStore, TrainConfig
from dpsat_core.cli import build_parser, main

TRAIN_KEYS = {
    "run_id",
    "method",
    "dataset",
    "epsilon_spent",
    "delta",
    "target_epsilon",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "releases",
    "accountant",
    "test_accuracy",
    "seconds",
}


TRAIN_DPSAM = (
    "train",
    "--dataset",
    "breast_cancer",
    "--method",
    "dpsam",
    "--epsilon",
    "3",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--json",
)


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_json_then_runs_and_show(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    code, out, _ = cli(capsys, *TRAIN_DPSAM, "--store", db)
    assert code == 0
    row = json.loads(out)
    assert TRAIN_KEYS <= set(row) and row["method"] == "dpsam" and row["releases"] == 2 * row["steps"]
    assert row["epsilon_spent"] <= row["target_epsilon"] == 3.0 and "epsilon" not in row
    code, out, err = cli(capsys, "runs", "--json", "--store", db)
    runs = json.loads(out)
    assert f"store: {db}" in err
    assert code == 0 and [r["run_id"] for r in runs] == [row["run_id"]]
    assert {"run_id", "status", "method", "target_epsilon", "epsilon_spent", "test_accuracy"} <= set(runs[0])
    assert runs[0]["status"] == "done" and "epsilon" not in runs[0]
    code, out, _ = cli(capsys, "show", row["run_id"], "--json", "--store", db)
    shown = json.loads(out)
    assert len(shown["epochs"]) == 1 and shown["epochs"][0]["releases"] == row["releases"]
    sizes = shown["summary"]
    assert sizes["n_test"] == 114 and sizes["n_train"] + sizes["n_validation"] + sizes["n_test"] == 569  # its rows
    code, out, _ = cli(capsys, *TRAIN_DPSAM, "--store", db)
    assert json.loads(out)["reused"] is True


@pytest.mark.slow
def test_a_pool_sweep_stores_every_cell_in_the_one_store_then_lists_them(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    grid = ("--methods", "sgd,dpsgd,dpsat", "--epsilons", "2", "--seeds", "0,1", "--epochs", "1", "--batch-size", "64")
    code, out, _ = cli(capsys, "sweep", "--dataset", "breast_cancer", *grid, "--workers", "2", "--json", "--store", db)
    result = json.loads(out)
    assert code == 0 and len(result["trained"]) == 2 + 2 * 2 and not result["errors"] and not result["failed"]
    assert sorted(r.run_id for r in RunStore(db).list_runs(status="done")) == sorted(result["trained"])
    code, out, _ = cli(capsys, "runs", "--store", db)
    assert (
        all(re.search(rf"\b{method}\b", out) for method in ("sgd", "dpsgd", "dpsat"))
        and "run_id" in out
        and f"store: {db}" in out
    )
    # where the noise came from: research (seeded) for the private runs, none for SGD
    rows = {line.split()[2]: line.split()[5] for line in out.splitlines()[2:] if line.strip()}
    assert rows["dpsgd"] == rows["dpsat"] == "research" and rows["sgd"] == "–"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epsilon", "0"], "epsilon must be a finite number > 0"),
        (["train", "--method", "dpsgd", "--delta", "0.5", "--dataset", "breast_cancer"], "must be < 1/n"),
        (["train", "--batch-size", "5000", "--dataset", "breast_cancer"], "exceeds the 409"),
        (["train", "--rho", "-1"], "rho must be"),
        (["train", "--dataset", "nowhere"], "unknown dataset"),
        (["show", "abc123"], "no run 'abc123'"),
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_2(tmp_path, args, message, capsys):
    code, out, err = cli(capsys, *args, "--store", str(tmp_path / "r.db"))
    assert code == 2 and out == "" and message in _one_error_line(err)


@pytest.mark.slow
def test_bad_input_to_the_installed_command_is_one_line_on_stderr_with_exit_2(tmp_path):
    # end to end in a fresh interpreter: nothing that loading the data, torch or Opacus prints reaches stderr
    args = ["train", "--method", "dpsgd", "--delta", "0.5", "--dataset", "breast_cancer"]
    proc = subprocess.run(
        [sys.executable, "-m", "dpsat_core", *args, "--store", str(tmp_path / "r.db")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == "" and "must be < 1/n" in _one_error_line(proc.stderr)
    assert not (tmp_path / "r.db").exists()  # refused before the store file was created


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: command (see dpsat --help)"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x' (see dpsat train --help)"),
        (["sweep", "--epsilons", "1,two"], "'two' is not one (see dpsat sweep --help)"),
        (["analyze", "abc123", "--kind", "hessian", "--samples", "0"], "n_samples must be > 0"),
    ],
)
def test_usage_errors_are_one_line_with_a_hint_to_help(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse exits; the analysis check returns 2
        sys.exit(main(args))
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_a_usage_error_from_the_installed_command_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dpsat_core", "train", "--batch-size", "big"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage:" not in proc.stderr
    assert "invalid int value: 'big' (see dpsat train --help)" in _one_error_line(proc.stderr)


def _cifar_folder(folder, raw: bytes) -> str:
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(raw)
    return str(folder)


def _idx_folder(folder, raw: bytes, suffix: str) -> str:
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (folder / f"{name}{suffix}").write_bytes(raw)
    return str(folder)


def _file(folder, name: str, raw: bytes) -> str:
    (folder / name).write_bytes(raw)
    return str(folder / name)


def _protocol_9() -> bytes:
    raw = bytearray(pickle.dumps({b"data": 1}, protocol=5))
    raw[1] = 9
    return bytes(raw)


BAD_DATA = {
    "cifar data of the wrong size": (
        lambda d: _cifar_folder(d, pickle.dumps({b"data": np.zeros((12, 100), np.uint8), b"labels": [0] * 12})),
        "'data' must be n rows of 3072 bytes",
    ),
    "pickle protocol 9": (
        lambda d: _file(d, "data_batch_1", _protocol_9()) and str(d),
        "unsupported pickle protocol: 9",
    ),
    "idx with a 6-byte header": (lambda d: _idx_folder(d, bytes([0, 0, 8, 3, 0, 0]), ""), "IDX header is cut short"),
    "truncated gzip": (
        lambda d: _idx_folder(d, gzip.compress(os.urandom(3000))[:1000], ".gz"),
        "is not a complete gzip file",
    ),
    "random bytes named .npz": (lambda d: _file(d, "r.npz", os.urandom(3000)), "r.npz is not an NPZ file"),
    "binary csv": (lambda d: _file(d, "b.csv", bytes(range(128, 256)) * 8), "b.csv is not UTF-8 text"),
    "empty csv": (lambda d: _file(d, "e.csv", b""), "e.csv is empty"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_files_are_one_line_with_exit_2(case, tmp_path, capsys):
    make, message = BAD_DATA[case]
    folder = tmp_path / "data"
    folder.mkdir()
    args = ("train", "--dataset", make(folder), "--target", "y", "--store", str(tmp_path / "r.db"))
    code, _, err = cli(capsys, *args)
    assert code == 2 and message in _one_error_line(err)


def test_csv_with_text_in_a_numeric_column_via_the_cli(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30)) + "oops,1,0\n")
    code, _, err = cli(capsys, "train", "--dataset", str(path), "--target", "y", "--store", str(tmp_path / "r.db"))
    assert code == 2 and "column 'a' is numeric but holds text" in err


def test_every_command_has_help(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "sweep", "runs", "show", "analyze", "report", "export", "delete", "dashboard"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "--store" in out and "%%" not in out  # e.g. "95% intervals" in compare's own help
    with pytest.raises(SystemExit) as exit_info:  # the overview lists every command's help line
        main(["--help"])
    overview = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(command in overview for command in commands)
    assert "95% intervals" in overview


def test_a_run_without_noise_shows_an_infinite_epsilon_not_a_blank(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    args = ("--dataset", "breast_cancer", "--method", "dpsgd", "--sigma", "0", "--epochs", "1", "--store", db)
    code, out, _ = cli(capsys, "train", *args, "--json")
    row = json.loads(out)  # strict JSON: no bare Infinity
    assert code == 0 and row["epsilon_spent"] == "inf" and row["noise_multiplier"] == 0.0
    code, out, _ = cli(capsys, "show", row["run_id"], "--store", db)
    assert "ε spent=∞" in out
    code, out, _ = cli(capsys, "show", row["run_id"], "--json", "--store", db)
    assert json.loads(out)["epochs"][0]["epsilon_spent"] == "inf"


def test_progress_in_a_pipe_is_one_line_per_stage_not_an_overwritten_line(capsys):
    from dpsat_core.cli import _StderrProgress
    from dpsat_core.progress import Progress

    progress = _StderrProgress()
    for done in range(4):
        progress(Progress(stage="train", done=done, total=3, message=f"epoch {done}"))
    progress(Progress(stage="hessian", done=0, total=1, message="λ"))
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines() == ["[train] 0/3 epoch 0", "[train] 3/3 epoch 3", "[hessian] 0/1 λ"]
    # a sweep's cells: a line as each starts and finishes, none for their steps in between
    for done, message, event in (
        (0, "a · 1 of 2: starting", "started"),
        (0, "a · 1 of 2: epoch 1/1", None),
        (1, "a · 1 of 2 finished", "finished"),
        (1, "b · 2 of 2: starting", "started"),
    ):
        progress(Progress("sweep", done, 2, message, {"event": event} if event else {}))
    assert capsys.readouterr().err.splitlines() == [
        "[sweep] 0/2 a · 1 of 2: starting",
        "[sweep] 1/2 a · 1 of 2 finished",
        "[sweep] 1/2 b · 2 of 2: starting",
    ]


def test_compare_leaves_diverged_runs_out_unless_asked_and_says_how_many(tmp_path, capsys):
    from tests.factories import store_finished, store_one_diverged

    store = RunStore(tmp_path / "runs.db")
    store_one_diverged(store)
    args = ["compare", "--json", "--no-probe", "--store", str(store.path)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert [r["n_pairs"] for r in json.loads(out)] == [1] and "1 diverged run left out" in err
    assert main([*args, "--include-diverged"]) == 0
    out, err = capsys.readouterr()
    assert [r["n_pairs"] for r in json.loads(out)] == [2] and "1 diverged run included, as asked" in err
    only = RunStore(tmp_path / "diverged.db")  # every run of the setting diverged: say that, not "train some"
    store_finished(only, TrainConfig(method="dpsgd", epsilon=3.0, epochs=1), train_loss=1e7, accuracy=0.1)
    assert main(["compare", "--no-probe", "--store", str(only.path)]) == 2
    err = capsys.readouterr().err
    assert "every finished run diverged" in err and "--include-diverged" in err


def test_compare_counts_the_test_set_error_and_starts_with_the_setting(tmp_path, capsys):
    from dataclasses import replace

    from tests.factories import summary

    store = RunStore(tmp_path / "runs.db")
    for method, accuracy in (("dpsgd", 300 / 360), ("dpsat", 299 / 360)):  # one test example apart at each seed
        for seed in (0, 1):
            config = TrainConfig(method=method, epsilon=3.0, seed=seed, epochs=1).normalized()
            done = summary(config, accuracy=accuracy, epsilon_spent=2.9, seconds_per_epoch=1.0)
            store.finish(store.create_run(config), replace(done, n_test=360), {})
    assert main(["compare", "--no-probe", "--store", str(store.path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and lines[0].startswith("setting ") and len(lines) == 3
    assert "2 seed pairs; test-set term a floor" in lines[1]  # stored without which test examples each got right
    assert lines[1].endswith("No measurable accuracy difference at this size.")
    assert "seed-to-seed variation plus at least the test set's sampling error" in lines[2]
    assert lines[2].strip().startswith("The accuracy intervals") and "Sharpness ratios" not in out  # none analysed
    assert main(["compare", "--json", "--no-probe", "--store", str(store.path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["n_test"] == 360 and row["ci_low"] < 0 < row["ci_high"] and row["exact_test_pairs"] == 0


def test_compare_prints_sharpness_ratios_with_their_interval(tmp_path, capsys):
    from scipy import stats

    from dpsat_core.compare import RATIO_INTERVAL
    from tests.factories import store_default_analyses, summary

    store = RunStore(tmp_path / "runs.db")
    curvature = {("dpsgd", 0): 2.0, ("dpsat", 0): 1.6, ("dpsgd", 1): 3.0, ("dpsat", 1): 2.7, ("dpsgd", 2): 1.0}
    for (method, seed), lam in curvature.items():
        config = TrainConfig(method=method, epsilon=3.0, seed=seed, epochs=1).normalized()
        run_id = store.create_run(config)
        store.finish(run_id, summary(config, accuracy=0.8, epsilon_spent=2.9, seconds_per_epoch=1.0), {})
        store_default_analyses(store, run_id, lam)
    assert main(["compare", "--no-probe", "--store", str(store.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = lines[1]
    ratios = [0.8, 0.9]  # DP-SAT/DP-SGD at seeds 0 and 1 (seed 2 has no DP-SAT run): t with 1 degree of freedom
    half = stats.t.ppf(0.975, 1) * abs(math.log(0.8) - math.log(0.9)) / 2
    middle = math.fsum(map(math.log, ratios)) / 2
    low, high = math.exp(middle - half), math.exp(middle + half)
    interval = f"{math.exp(middle):#.3g} (95% CI {low:#.3g} to {high:#.3g}, 2 seed"
    assert f"adaptive sharpness ×{interval} pairs)" in line and f"λ_max ×{interval} pairs)" in line
    # the caption under the verdicts: the accuracy intervals first, then what the ratio intervals cover
    assert lines[2].strip().startswith("The accuracy intervals") and lines[2].endswith(f" {RATIO_INTERVAL}.")
    assert main(["compare", "--json", "--no-probe", "--store", str(store.path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["sharpness_ratio"] == pytest.approx(math.exp(middle)) and row["sharpness_ratio_pairs"] == 2
    assert row["sharpness_ratio_ci"] == pytest.approx([math.exp(middle - half), math.exp(middle + half)])
    assert row["lambda_max_ratio_ci"] == pytest.approx(row["sharpness_ratio_ci"])
    assert row["sharpness_ratio_withheld"] is None and row["lambda_max_ratio_withheld"] is None


AUDIT = ("audit", "--dataset", "breast_cancer", "--method", "dpsat", "--sigma", "1", "--epochs", "1")


def test_audit_json_has_exactly_the_documented_keys_and_is_marked_in_runs(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    code, out, _ = cli(capsys, *AUDIT, "--batch-size", "64", "--canaries", "100", "--json", "--store", db)
    assert code == 0
    row = json.loads(out)
    assert set(row) == {
        "run_id",
        "method",
        "mode",
        "canaries",
        "guesses",
        "correct",
        "epsilon_lower_bound",
        "confidence",
        "epsilon_spent",
        "auc",
    }
    assert row["method"] == "dpsat" and row["mode"] == "whitebox" and row["canaries"] == 100
    assert 0 <= row["correct"] <= row["guesses"] <= 100 and row["confidence"] == 0.95
    assert 0 <= row["epsilon_lower_bound"] <= row["epsilon_spent"]
    code, out, _ = cli(capsys, "runs", "--store", db)
    assert row["run_id"] in out and "audit run (whitebox)" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--canaries", "9"), "error: canaries must be a whole number ≥ 10, got 9: e.g. 1000"),
        ((), "error: canaries=1000 exceeds the 409 training examples of breast_cancer: use at most 409"),
        (("--method", "sam", "--canaries", "100"), "error: method 'sam' makes no noisy releases, so there is no ε"),
        (("--mode", "greybox"), "error: argument --mode: invalid choice: 'greybox'"),
    ],
)
def test_bad_audit_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, message):
    db = tmp_path / "r.db"
    try:
        code = main([*AUDIT, *extra, "--store", str(db)])
    except SystemExit as exc:  # a usage error exits from argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(message)
    assert not db.exists() or RunStore(db).list_runs() == []


def test_secure_trains_in_release_mode_and_show_says_which_noise_a_run_used(tmp_path, capsys):
    from dpsat_core import RunStore
    from dpsat_core.caveats import SEEDED_NOISE, TRAINING_DATA

    db = str(tmp_path / "r.db")
    quick = ("train", "--dataset", "breast_cancer", "--method", "dpsgd", "--epochs", "1", "--json", "--store", db)
    research = json.loads(cli(capsys, *quick)[1])["run_id"]
    releases = [json.loads(cli(capsys, *quick, "--secure", "--no-reuse")[1])["run_id"] for _ in range(2)]
    store = RunStore(db)
    assert store.get(research).config.randomness == "research"
    assert {store.get(r).config.randomness for r in releases} == {"release"}
    assert json.loads(cli(capsys, "show", releases[0], "--json", "--store", db)[1])["config"]["randomness"] == "release"
    # two release runs of one config: independent noise and batches, so different weights
    a, b = (store.load_weights(r) for r in releases)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    code, out, _ = cli(capsys, "show", research, "--store", db)
    assert code == 0 and SEEDED_NOISE in out and TRAINING_DATA in out
    code, out, _ = cli(capsys, "show", releases[0], "--store", db)
    assert SEEDED_NOISE not in out and "OS entropy source" in out and TRAINING_DATA in out
    # the sweep builds its configs with the same option builder
    from dpsat_core.cli import _config

    assert _config(build_parser().parse_args(["sweep", "--secure"])).randomness == "release"
    assert _config(build_parser().parse_args(["sweep"])).randomness == "research"


def test_a_data_file_named_relative_to_the_current_directory_is_stored_absolute(tmp_path, monkeypatch, capsys):
    # a run stored with 'inj.csv' as typed could not be analysed from any other directory
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.csv").write_text("a,b,y\n" + "".join(f"{i % 7},{(i * 3) % 11},{i % 2}\n" for i in range(60)))
    db = str(tmp_path / "runs.db")
    monkeypatch.chdir(tmp_path / "d")
    args = ["--target", "y", "--method", "sgd", "--epochs", "1", "--batch-size", "16", "--store", db, "--json"]
    assert main(["train", "--dataset", "t.csv", *args]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert RunStore(db).get(run_id).config.dataset == str(tmp_path / "d" / "t.csv")
    assert main(["runs", "--dataset", "t.csv", "--store", db]) == 0 and run_id in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "d/t.csv", *args]) == 0  # the same file by another name: the same run
    assert json.loads(capsys.readouterr().out)["reused"]
    assert main(["train", "--dataset", "missing.csv", *args]) == 2
    assert "missing.csv" in capsys.readouterr().err  # a path that does not exist is quoted as typed


def test_a_reader_that_stops_early_gets_no_error_message(tmp_path):
    # `dpsat runs | head -0`: the pipe closes before dpsat writes; that is not an error worth a line
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "dpsat_core", "runs", "--store", str(tmp_path / "runs.db")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


def test_compare_json_says_at_which_seeds_a_ratio_was_withheld():
    from dpsat_core.cli import _ratio_json
    from dpsat_core.compare import WithheldRatio, paired_ratio

    withheld = _ratio_json("lambda_max_ratio", WithheldRatio(nonpositive_seeds=(0, 2)))
    assert withheld == {
        "lambda_max_ratio": None,
        "lambda_max_ratio_ci": None,
        "lambda_max_ratio_pairs": None,
        "lambda_max_ratio_withheld": [0, 2],
    }
    shown = _ratio_json("lambda_max_ratio", paired_ratio([0.5, 2.0]))
    assert shown["lambda_max_ratio"] == pytest.approx(1.0) and shown["lambda_max_ratio_withheld"] is None
    assert all(v is None for v in _ratio_json("lambda_max_ratio", None).values())  # not analysed


@pytest.mark.parametrize(
    "more, warmed",
    [(["--workers", "2"], True), (["--workers", "1"], False), (["--workers", "2", "--seeds", "0"], False)],
)
def test_a_pool_sweep_starts_its_workers_fork_server_before_checking_the_grid(more, warmed, monkeypatch, capsys):
    # the server imports torch and Opacus (~5 s of a core) while the grid is checked, not after: only where a pool of
    # two or more workers will train two or more cells
    from dpsat_core import ConfigError, sweeps, workers

    order = []
    monkeypatch.setattr(workers, "warm_up", lambda: order.append("fork server"))

    def check(*args, **kwargs):
        order.append("check")
        raise ConfigError("refused here")

    monkeypatch.setattr(sweeps, "check_cells", check)
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "dpsgd", "--epsilons", "1", "--seeds", "0,1", *more]
    assert main(args) == 2 and "refused here" in capsys.readouterr().err
    assert order == (["fork server", "check"] if warmed else ["check"])


def test_a_sweep_rerun_with_one_cell_left_starts_no_fork_server(tmp_path, monkeypatch, capsys):
    # the cell left trains in the sweep's own process: a server would import torch and Opacus for nothing
    from dpsat_core import SweepSpec, sweep, sweeps, workers

    db = tmp_path / "runs.db"
    base = TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64)
    assert len(sweep(SweepSpec(base=base, methods=("sgd",), epsilons=(), seeds=(0,)), RunStore(db)).trained) == 1
    order = []
    monkeypatch.setattr(workers, "warm_up", lambda: order.append("fork server"))
    monkeypatch.setattr(sweeps, "check_cells", lambda cells, **k: order.append(f"check {len(cells)}"))
    monkeypatch.setattr(sweeps, "sweep", lambda *a, **k: sweeps.SweepResult())
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "sgd", "--seeds", "0,1", "--epochs", "1"]
    assert main([*args, "--batch-size", "64", "--workers", "2", "--store", str(db)]) == 0
    assert order == ["check 1"]  # only the cell that will train is checked


LIGHT_COMMANDS = """
import json, sys
from dpsat_core.cli import main
codes = [main(args) for args in json.loads(sys.argv[1])]
print(json.dumps([codes, sorted({m.split(".")[0] for m in sys.modules} & {"torch", "opacus"})]))
"""


def test_bad_input_and_a_fully_reused_sweep_are_answered_without_importing_torch_or_opacus(tmp_path):
    # each costs seconds to import: refusing δ ≥ 1/n (tables and images) or listing reused cells needs neither
    from dpsat_core import SweepSpec, sweep

    db = str(tmp_path / "runs.db")
    base = TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64)
    sweep(SweepSpec(base=base, methods=("sgd", "dpsgd"), epsilons=(3.0,), seeds=(0,)), RunStore(db))
    again = ["sweep", "--dataset", "breast_cancer", "--methods", "sgd,dpsgd", "--epsilons", "3", "--seeds", "0"]
    commands = [
        ["train", "--method", "dpsgd", "--delta", "0.5", "--dataset", "breast_cancer", "--store", db],
        ["sweep", "--methods", "dpsgd", "--delta", "0.5", "--dataset", "digits", "--workers", "2", "--store", db],
        [*again, "--epochs", "1", "--batch-size", "64", "--workers", "2", "--store", db],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_COMMANDS, json.dumps(commands)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    codes, heavy = json.loads(proc.stdout.splitlines()[-1])
    assert codes == [2, 2, 0] and heavy == []
    assert proc.stderr.count("must be < 1/n") == 2 and "0 trained, 2 reused, 0 failed" in proc.stdout
    assert "[sweep] 2 cells reused, 0 to train" in proc.stderr  # no "0/0" count of nothing


def test_a_reused_sweep_still_refuses_a_cuda_device_this_machine_lacks(tmp_path, monkeypatch, capsys):
    # as `dpsat train` does: the device is no part of the settings' hash, so every cell would be reused
    from dpsat_core import SweepSpec, sweep

    db = str(tmp_path / "runs.db")
    base = TrainConfig(dataset="breast_cancer", method="sgd", epochs=1, batch_size=64)
    sweep(SweepSpec(base=base, methods=("sgd",), epsilons=(), seeds=(0,)), RunStore(db))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "sgd", "--seeds", "0", "--epochs", "1"]
    assert main([*args, "--batch-size", "64", "--device", "cuda", "--store", db]) == 2
    assert "asked for CUDA but none is available" in capsys.readouterr().err
    assert len(RunStore(db).list_runs()) == 1


def test_runs_whose_model_predicts_one_class_are_marked_in_the_cli(tmp_path, monkeypatch, capsys):
    from dpsat_core import training

    real = training.predict
    monkeypatch.setattr(training, "predict", lambda *a: (real(*a)[0], torch.zeros_like(real(*a)[1])))
    db = str(tmp_path / "runs.db")
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "dpsgd", "--seeds", "0", "--epochs", "1"]
    assert main([*args, "--epsilons", "3", "--batch-size", "64", "--store", db]) == 0  # one cell: trained here
    out = capsys.readouterr().out
    assert out.splitlines()[2].endswith("  one class predicted")  # the run's row in the table
    assert "note: 1 run (DP-SGD at ε=3) predicts one class for every test example" in out
    (record,) = RunStore(db).list_runs()
    assert main(["show", record.run_id, "--store", db]) == 0
    assert "  note: 1 run (DP-SGD at ε=3) predicts one class" in capsys.readouterr().out


@pytest.mark.parametrize("command, resume", [(["runs"], False), (["train"], True), (["dashboard"], False)])
def test_an_interrupted_command_says_how_to_resume_only_where_a_rerun_resumes(command, resume, monkeypatch, capsys):
    import dpsat_core.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    for name in ("cmd_runs", "cmd_train", "cmd_dashboard"):
        monkeypatch.setattr(cli, name, interrupted)
    assert main(command) == 130
    err = capsys.readouterr().err
    assert err.startswith("\ninterrupted") and ("run the same command again to resume" in err) == resume


def test_a_sweep_that_trained_nothing_prints_no_empty_table(tmp_path, monkeypatch, capsys):
    # e.g. stopped while its cells were planned: the summary line, and no table header over nothing
    from dpsat_core import sweeps

    monkeypatch.setattr(sweeps, "sweep", lambda *a, **k: sweeps.SweepResult(cancelled=True, skipped=["SGD, seed 0"]))
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "sgd", "--seeds", "0", "--epochs", "1"]
    assert main([*args, "--workers", "1", "--store", str(tmp_path / "runs.db")]) == 0
    assert capsys.readouterr().out == "sweep: 0 trained, 0 reused, 0 failed\n"
