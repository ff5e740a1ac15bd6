import json
import subprocess
import sys

import pytest

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
    code, out, _ = cli(capsys, *TRAIN_DPSAM, "--store", db)
    assert json.loads(out)["reused"] is True


def test_sweep_then_human_readable_listing(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    code, out, _ = cli(
        capsys,
        "sweep",
        "--dataset",
        "breast_cancer",
        "--methods",
        "dpsgd,dpsat",
        "--epsilons",
        "2",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--json",
        "--store",
        db,
    )
    assert code == 0 and len(json.loads(out)["trained"]) == 2
    code, out, _ = cli(capsys, "runs", "--store", db)
    assert "dpsat" in out and "dpsgd" in out and "run_id" in out and f"store: {db}" in out


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
def test_bad_input_is_one_line_on_stderr_with_exit_2(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "dpsat_core", *args, "--store", str(tmp_path / "r.db")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr


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
        assert "--store" in capsys.readouterr().out


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
