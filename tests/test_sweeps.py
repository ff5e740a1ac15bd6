import dataclasses
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from dpsat_core import ConfigError, RunStore, SweepSpec, TrainConfig, sweep
from tests.at_once import twice_at_once
from tests.processes import alive, wait_for

BASE = TrainConfig(dataset="breast_cancer", epochs=1, batch_size=64)


def test_cells_cover_the_grid_once_and_non_private_methods_once_per_seed():
    spec = SweepSpec(base=BASE, methods=("sgd", "dpsgd", "dpsat"), epsilons=(1.0, 4.0), seeds=(0, 1))
    cells = spec.cells()
    assert len(cells) == 2 + 2 * 2 * 2
    assert len({c.config_hash() for c in cells}) == len(cells)
    assert {c.epsilon for c in cells if c.method == "sgd"} == {None}


def test_cell_labels_name_the_method_as_users_know_it_and_tell_every_cell_of_a_grid_apart():
    from dpsat_core import method_info
    from dpsat_core.sweeps import cell_label

    spec = SweepSpec(base=BASE, methods=("sgd", "dpsgd", "dpsat"), epsilons=(1.0, 4.0), seeds=(0, 1), rhos=(0.01, 0.1))
    labels = [cell_label(c) for c in spec.cells()]
    assert len(set(labels)) == len(labels) == 2 + 2 * 2 + 2 * 2 * 2
    assert "DP-SAT, ε = 4, ρ = 0.1, seed 1" in labels and "SGD (non-private), seed 0" in labels
    assert "DP-SGD, σ = 1.5, seed 2" == cell_label(
        dataclasses.replace(BASE, method="dpsgd", epsilon=None, noise_multiplier=1.5, seed=2)
    )
    assert all(label.split(",")[0] in {method_info(m).label for m in spec.methods} for label in labels)


def test_a_small_sweep_stores_every_cell_and_a_rerun_trains_nothing(store):
    spec = SweepSpec(base=BASE, methods=("dpsgd", "dpsat"), epsilons=(2.0,), seeds=(0,))
    reports = []
    first = sweep(spec, store, on_progress=reports.append)
    assert len(first.trained) == 2 and not first.failed and not first.reused
    assert reports[-1].done == reports[-1].total == 2
    assert any(r.metrics.get("epsilon_spent") and r.metrics.get("test_accuracy") is not None for r in reports)
    # the method's own name, and the cell's place in the grid
    assert any(r.message.startswith("DP-SAT, ε = 2, ρ = 0.05, seed 0 · 2 of 2: ") for r in reports)
    records = [store.get(r) for r in first.trained]
    assert {r.method for r in records} == {"dpsgd", "dpsat"}
    assert all(r.status == "done" and r.epsilon_spent <= 2.0 for r in records)
    second = sweep(spec, store)
    assert second.trained == [] and sorted(second.reused) == sorted(first.trained)


def test_a_sweep_with_one_cell_left_to_train_trains_it_here_not_in_a_pool(store, monkeypatch):
    # a pool would first start a fork server (seconds) and give its one worker a share of the cores
    from dpsat_core import sweeps

    spec = SweepSpec(base=BASE, methods=("sgd",), epsilons=(), seeds=(0, 1))
    assert len(sweep(dataclasses.replace(spec, seeds=(0,)), store).trained) == 1
    monkeypatch.setattr(sweeps, "_sweep_pool", lambda *a, **k: pytest.fail("a pool started for one cell"))
    seen = []
    result = sweep(spec, store, workers=2, on_progress=seen.append)
    assert len(result.reused) == 1 and len(result.trained) == 1
    assert seen[0].message == "1 cell reused, 1 to train"


def test_in_process_and_pool_sweeps_give_the_same_reasons_and_messages(tmp_path):
    diverging = SweepSpec(
        base=TrainConfig(**{**BASE.to_dict(), "lr": 1e38}), methods=("sgd", "dpsgd"), epsilons=(3.0,), seeds=(0,)
    )
    outcomes = {}
    for workers in (1, 2):
        reports = []
        result = sweep(diverging, RunStore(tmp_path / f"{workers}.db"), workers=workers, on_progress=reports.append)
        outcomes[workers] = (sorted(result.errors), {r.message for r in reports}, len(result.failed))
    assert outcomes[1] == outcomes[2]
    errors, messages, failed = outcomes[1]
    assert failed == 2 and errors[0].startswith("DP-SGD, ε = 3, seed 0: training diverged") and "lower lr" in errors[0]
    # each cell named with its place in the grid as it is planned, starts, steps and finishes, in both paths
    sgd, dp = "SGD (non-private), seed 0 · 1 of 2", "DP-SGD, ε = 3, seed 0 · 2 of 2"
    assert {f"{sgd} finished", f"{dp} finished", f"{sgd}: starting", f"{dp}: starting"} <= messages
    assert {f"planning σ for {sgd}", f"planning σ for {dp}"} <= messages
    assert any(m.startswith(f"{dp}: epoch 1/1") for m in messages)


def test_cancelling_a_sweep_keeps_what_finished(store):
    spec = SweepSpec(base=BASE, methods=("dpsgd",), epsilons=(1.0, 2.0, 3.0), seeds=(0,))
    finished = []
    result = sweep(spec, store, on_progress=lambda p: finished.append(p.done), should_stop=lambda: max(finished) >= 1)
    assert result.cancelled and len(result.trained) == 1
    assert len(store.list_runs(status="done")) == 1


def test_a_sweep_cancelled_while_planning_starts_no_worker_and_lists_every_cell_as_not_started(store, monkeypatch):
    import dpsat_core.sweeps as sweeps

    monkeypatch.setattr(sweeps, "_sweep_pool", lambda *args: pytest.fail("workers started after the cancel"))
    spec = SweepSpec(base=BASE, methods=("sgd", "dpsgd"), epsilons=(2.0,), seeds=(0, 1))
    result = sweep(spec, store, workers=2, should_stop=lambda: True)
    assert result.cancelled and not (result.trained or result.stopped or result.errors)
    assert sorted(result.skipped) == sorted(sweeps.cell_label(c) for c in spec.cells()) and store.list_runs() == []


def test_a_sweep_needs_methods_seeds_and_epsilons():
    with pytest.raises(ConfigError, match="unknown method"):
        SweepSpec(base=BASE, methods=("dpadam",), epsilons=(1.0,), seeds=(0,))
    with pytest.raises(ConfigError, match="need at least one epsilon"):
        SweepSpec(base=BASE, methods=("dpsgd",), epsilons=(), seeds=(0,))


def test_rho_values_make_cells_for_the_methods_that_use_rho_only():
    spec = SweepSpec(base=BASE, methods=("dpsgd", "dpsat", "dpsam"), epsilons=(2.0,), seeds=(0, 1), rhos=(0.01, 0.1))
    cells = spec.cells()
    assert sorted({(c.method, c.rho) for c in cells}) == [
        ("dpsam", 0.01),
        ("dpsam", 0.1),
        ("dpsat", 0.01),
        ("dpsat", 0.1),
        ("dpsgd", 0.0),
    ]
    assert len(cells) == 2 * (1 + 2 + 2) and len({c.config_hash() for c in cells}) == len(cells)
    with pytest.raises(ConfigError, match="rho must be"):
        SweepSpec(base=BASE, methods=("dpsat",), epsilons=(2.0,), seeds=(0,), rhos=(-1.0,))


def test_the_cli_sweeps_rho_and_compare_keeps_each_rho_apart(store, capsys):
    from dpsat_core.cli import main

    args = ["sweep", "--dataset", "breast_cancer", "--methods", "dpsgd,dpsat", "--epsilons", "3", "--seeds", "0,1"]
    args += ["--rhos", "0.02,0.2", "--epochs", "1", "--batch-size", "64", "--workers", "1", "--store", str(store.path)]
    assert main([*args, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["trained"]) == 2 * 3
    assert main(["compare", "--json", "--no-probe", "--store", str(store.path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["method"], r["rho"], r["n_pairs"]) for r in rows) == [("dpsat", 0.02, 2), ("dpsat", 0.2, 2)]


def test_the_sweep_bar_moves_within_a_run_and_stays_where_a_cancel_stopped_it(store):
    spec = SweepSpec(
        base=TrainConfig(dataset="breast_cancer", epochs=4, batch_size=64),
        methods=("dpsgd",),
        epsilons=(3,),
        seeds=(0,),
    )
    seen = []
    calls = []
    result = sweep(spec, store, on_progress=seen.append, should_stop=lambda: calls.append(1) or len(calls) > 12)
    fractions = [p.fraction for p in seen]
    assert result.cancelled and not result.trained
    assert 0 < max(fractions) < 1  # it moved during the one run, and never claimed the run was finished
    assert fractions[-1] == max(fractions) and "finished" not in seen[-1].message


def test_two_identical_sweeps_at_once_train_each_cell_once(store):
    spec = SweepSpec(base=BASE, methods=("sgd", "dpsgd"), epsilons=(3.0,), seeds=(0, 1))
    cells = spec.cells()
    assert len({c.config_hash() for c in cells}) == 4  # the seed is in the config: each seed is its own claim
    a, b = twice_at_once(lambda: sweep(spec, store))
    assert not (a.errors or b.errors)
    assert not set(a.trained) & set(b.trained)  # no cell trained by both
    assert sorted(a.trained + b.trained) == sorted(r.run_id for r in store.list_runs())
    assert sorted(a.run_ids) == sorted(b.run_ids)  # each sweep ends with every cell, trained or reused
    assert [r.status for r in store.list_runs()] == ["done"] * 4


def _descendants(pid: int) -> list[int]:
    """Pids of `pid`'s descendants: its children (the fork server, the resource tracker) and theirs (the workers)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _tail(log) -> str:
    """What a sweep wrote to its stderr file so far (the end of it)."""
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


def _start_long_sweep(path: Path, epsilons: str) -> tuple[subprocess.Popen, list[int], Any]:
    """A 2-worker CLI sweep of long DP-SGD cells, once both workers are training: (process, its children, its
    stderr file)."""
    args = ["sweep", "--dataset", "breast_cancer", "--methods", "dpsgd", "--epsilons", epsilons, "--seeds", "0"]
    args += ["--epochs", "400", "--batch-size", "64", "--accountant", "rdp", "--workers", "2", "--store", str(path)]
    # output to a file, not a pipe: an orphaned worker holding a pipe would block the test instead of failing it
    err = open(path.parent / "sweep.err", "w+")  # noqa: SIM115 - read by the caller
    process = subprocess.Popen([sys.executable, "-m", "dpsat_core", *args], stdout=subprocess.DEVNULL, stderr=err)
    store = RunStore(path)
    started = wait_for(lambda: process.poll() is None and len(store.list_runs(status="running")) == 2, timeout=300)
    assert started, _tail(err) if process.poll() is not None else "no two running cells"
    children = _descendants(process.pid)
    assert len(children) >= 3  # the two workers, and the fork server or resource tracker
    return process, children, err


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_of_a_killed_sweep_stop_their_cells_and_exit(tmp_path):
    path = tmp_path / "runs.db"
    process, children, _ = _start_long_sweep(path, "1,2")
    process.kill()  # SIGKILL: the sweep process cannot clean up anything itself
    process.wait(timeout=60)
    assert wait_for(lambda: not any(alive(pid) for pid in children), timeout=120), [
        pid for pid in children if alive(pid)
    ]
    runs = RunStore(path).list_runs()
    assert len(runs) == 2 and {r.status for r in runs} == {"cancelled"}  # each worker stored its cell as cancelled


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_a_sweep_cleanly_and_says_how_to_resume(tmp_path):
    path = tmp_path / "runs.db"
    process, children, log = _start_long_sweep(path, "1,2,3")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    err = _tail(log)
    assert process.returncode == 128 + signal.SIGTERM
    assert (
        "stopped by SIGTERM: 0 runs trained, 2 cancelled while training (stored as cancelled), 1 cell not started"
        in err
    )
    assert "run the same command again to resume" in err
    runs = RunStore(path).list_runs()
    assert sorted(r.status for r in runs) == ["cancelled", "cancelled"]  # the queued third cell never started
    assert wait_for(lambda: not any(alive(pid) for pid in children), timeout=120)


def test_accountant_answers_live_in_the_store_equal_fresh_ones_and_a_second_sweep_asks_none(store, monkeypatch):
    import dpsat_core.accounting as accounting
    from dpsat_core import epsilon_spent

    asked = []
    real_epsilon, real_sigma = accounting._epsilon_with, accounting.calibrate_noise
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: asked.append("ε") or real_epsilon(*a, **k))
    monkeypatch.setattr(accounting, "calibrate_noise", lambda **k: asked.append("σ") or real_sigma(**k))
    base = dataclasses.replace(BASE, accountant="rdp")  # RDP: the same path as PRV, and quicker
    spec = SweepSpec(base=base, methods=("dpsgd",), epsilons=(2.5,), seeds=(0,))
    first = sweep(spec, store)
    assert len(first.trained) == 1 and "σ" in asked and "ε" in asked
    accounting.epsilon_spent.cache_clear(), real_sigma.cache_clear()
    asked.clear()
    again = sweep(dataclasses.replace(spec, seeds=(1,)), store)  # new runs, the same questions
    assert len(again.trained) == 1 and asked == []  # every answer came from the store, none from an accountant
    monkeypatch.setattr(accounting, "_epsilon_with", real_epsilon)
    for record in (store.get(r) for r in again.trained):
        fresh = epsilon_spent(
            noise_multiplier=record.summary.noise_multiplier,
            sample_rate=record.summary.sample_rate,
            releases=record.summary.releases,
            delta=record.summary.delta,
            accountant=record.config.accountant,
        )
        assert record.epsilon_spent == fresh.epsilon and record.summary.accountant == fresh.accountant


@pytest.mark.parametrize("method, accountant", [("dpsgd", "rdp"), ("dpsam", "rdp"), ("dpsgd", "prv")])
def test_after_the_parent_plans_a_cell_its_run_asks_the_accountant_nothing(store, monkeypatch, method, accountant):
    import dpsat_core.accounting as accounting
    from dpsat_core import epsilon_spent, run
    from dpsat_core.sweeps import calibrate_cells

    cell = dataclasses.replace(BASE, method=method, epochs=3, accountant=accountant, epsilon=2.0).normalized()
    calibrate_cells([cell], store)
    for cached in (accounting.epsilon_spent, accounting.epsilon_curve, accounting.calibrate_noise):
        cached.cache_clear()
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: pytest.fail("the accountant was asked"))
    monkeypatch.setattr(accounting, "_prv_curve", lambda *a, **k: pytest.fail("the accountant was asked"))
    record = run(cell, store).record  # σ, each epoch's ε and the final ε: all read from the parent's answers
    monkeypatch.undo()
    assert [e.releases for e in record.epochs] == [record.summary.releases * e // 3 for e in (1, 2, 3)]
    question = dict(
        noise_multiplier=record.summary.noise_multiplier,
        sample_rate=record.summary.sample_rate,
        delta=record.summary.delta,
        accountant=accountant,
    )
    curve = accounting.epsilon_curve(releases=tuple(e.releases for e in record.epochs), **question)
    assert [e.epsilon_spent for e in record.epochs] == [spent.epsilon for spent in curve]  # the accountant's own
    assert record.epsilon_spent == epsilon_spent(releases=record.summary.releases, **question).epsilon
    if accountant == "rdp":  # RDP's per-epoch ε is its ε for those releases
        assert curve == tuple(epsilon_spent(releases=e.releases, **question) for e in record.epochs)


def test_a_stop_while_the_sweep_plans_its_cells_ends_it_before_the_next_cell_is_planned(store, monkeypatch):
    import dpsat_core.planning as planning
    import dpsat_core.runner  # noqa: F401  # imported before the patch, so it keeps the real plan_run for later tests
    from dpsat_core import DpsatError

    planned, stop = [], threading.Event()

    def plan_then_stop(cell, *args, **kwargs):  # the user clicks Cancel while the first cell is being planned
        planned.append(cell.epsilon)
        stop.set()
        raise DpsatError("left for its run to report")  # calibrate_cells goes on to the next cell

    monkeypatch.setattr(planning, "plan_run", plan_then_stop)
    spec = SweepSpec(base=BASE, methods=("dpsgd",), epsilons=(2.0, 3.0), seeds=(0,))
    result = sweep(spec, store, should_stop=stop.is_set)
    assert planned == [2.0]  # the second cell's σ and per-epoch ε were never computed
    assert result.cancelled and len(result.skipped) == 2 and result.run_ids == [] and store.list_runs() == []


def test_a_stop_during_a_cells_sigma_search_ends_the_search_and_stores_nothing(store, monkeypatch):
    import dpsat_core.accounting as accounting
    from dpsat_core import Cancelled
    from dpsat_core.runner import run

    accounting.calibrate_noise.cache_clear()  # σ searched here, not read from an earlier test's answer
    evaluations: list[float] = []
    real = accounting._epsilon_with
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: evaluations.append(1) or real(*a, **k))
    spec = SweepSpec(base=BASE, methods=("dpsgd",), epsilons=(0.7, 0.8), seeds=(0,))
    result = sweep(spec, store, should_stop=lambda: len(evaluations) >= 1)  # Cancel clicked during the first search
    assert len(evaluations) == 1 and result.cancelled and len(result.skipped) == 2 and result.run_ids == []
    assert store.list_runs() == [] and store.find_done(spec.cells()[0].normalized().config_hash()) is None
    with pytest.raises(Cancelled):  # a single run: stopped before it claims a row
        run(spec.cells()[0], store, should_stop=lambda: len(evaluations) >= 2)
    assert len(evaluations) == 2 and store.list_runs() == []
    accounting.calibrate_noise.cache_clear()


def test_after_the_grid_is_checked_the_sweeps_planning_has_no_sigma_search_left_to_cancel(store, monkeypatch):
    # the README's wording: a sweep's σ are found by `check_sweep` before the job exists; the job's own planning
    # then reads them, so a Cancel there has no σ search to stop (a single run's job still searches, and stops)
    import dpsat_core.accounting as accounting
    from dpsat_core.sweeps import calibrate_cells, check_sweep

    spec = SweepSpec(base=dataclasses.replace(BASE, accountant="rdp"), methods=("dpsgd",), epsilons=(2.5,), seeds=(0,))
    check_sweep(spec, store)  # what the page and `dpsat sweep` do before starting
    accounting.calibrate_noise.cache_clear()  # a job is a fresh process: only the store remembers
    monkeypatch.setattr(accounting, "_epsilon_with", lambda *a, **k: pytest.fail("σ searched again in the job"))
    asked = []
    calibrate_cells([c.normalized() for c in spec.cells()], store, should_stop=lambda: asked.append(1) and False)
    assert asked == [1]  # asked once, between cells: never during a σ search


def test_a_stop_while_a_cells_per_epoch_epsilon_is_computed_starts_nothing(store, monkeypatch):
    from opacus.accountants.analysis import prv

    import dpsat_core.accounting as accounting

    accounting.epsilon_curve.cache_clear()
    real_curve, real_compose, started, composed = accounting.epsilon_curve, prv.compose_heterogeneous, [], []
    monkeypatch.setattr(accounting, "epsilon_curve", lambda **k: started.append(1) or real_curve(**k))
    monkeypatch.setattr(prv, "compose_heterogeneous", lambda **k: started and composed.append(1) or real_compose(**k))
    spec = SweepSpec(base=dataclasses.replace(BASE, epochs=30), methods=("dpsgd",), epsilons=(2.7,), seeds=(0,))
    result = sweep(spec, store, should_stop=lambda: bool(started))  # a stop once the curve has begun
    assert started and composed == []  # not one of its 30 epochs' compositions ran
    assert result.cancelled and not result.trained and store.list_runs() == []
