"""Landscape invariants: filter normalisation, the origin, coarse-then-full, vmap = loop, line endpoints."""

import pytest
import torch

from dpsat_core import ConfigError, TrainConfig, build_model, evaluate, train
from dpsat_core.data import load_dataset
from dpsat_core.landscape import LossEvaluator, iter_surface, line_between, noise_robustness, random_direction, slice_1d

pytestmark = pytest.mark.xdist_group("landscape")  # under `pytest -n`: one worker, so `trained` trains once


@pytest.fixture(scope="module")
def trained():
    """Two digits CNNs (different seeds) and the evaluation subset."""
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train[:256]), torch.tensor(data.y_train[:256])
    models = []
    for seed in (0, 1):
        result = train(TrainConfig(dataset="digits", method="dpsgd", epsilon=4.0, epochs=1, seed=seed))
        model = build_model(result.model, seed=0)
        model.load_state_dict(result.state_dict)
        models.append(model)
    return models, x, y


def _filter_norms(t):
    return t.reshape(t.shape[0], -1).norm(dim=1)


def test_direction_is_filter_normalised_and_ignores_biases_and_norm_layers(trained):
    (model, _), _, _ = trained
    weights = {n: p.detach() for n, p in model.named_parameters()}
    direction = random_direction(weights, seed=0)
    for name, w in weights.items():
        if w.dim() > 1:
            torch.testing.assert_close(_filter_norms(direction[name]), _filter_norms(w), rtol=1e-5, atol=1e-7)
        else:
            assert torch.count_nonzero(direction[name]) == 0
    kept = random_direction(weights, seed=0, ignore_bias_norm=False)
    bias = next(n for n, w in weights.items() if w.dim() == 1)
    assert kept[bias].norm().item() == pytest.approx(weights[bias].norm().item(), rel=1e-5)


def test_same_seed_gives_the_same_random_direction_for_every_run(trained):
    (a, b), _, _ = trained
    wa = {n: p.detach() for n, p in a.named_parameters()}
    wb = {n: p.detach() for n, p in b.named_parameters()}
    da, db = random_direction(wa, seed=7), random_direction(wb, seed=7)
    for name, w in wa.items():
        if w.dim() > 1:  # after undoing each run's filter norms, the draw is identical
            ua = da[name] / _filter_norms(w).reshape(-1, *([1] * (w.dim() - 1)))
            ub = db[name] / _filter_norms(wb[name]).reshape(-1, *([1] * (w.dim() - 1)))
            torch.testing.assert_close(ua, ub)
    assert not torch.equal(random_direction(wa, seed=8)["head.1.weight"], da["head.1.weight"])


def test_the_origin_of_slices_and_surfaces_is_the_evaluated_loss(trained):
    (model, _), x, y = trained
    expected, _ = evaluate(model, x, y)
    evaluator = LossEvaluator(model, x, y)
    line = slice_1d(evaluator, random_direction(evaluator.weights, seed=0), steps=11, span=0.5)
    assert line.center_loss == pytest.approx(expected, rel=1e-5)
    assert line.loss[5] == pytest.approx(expected, rel=1e-5) and line.axis[5] == 0.0
    surfaces = list(
        iter_surface(
            evaluator,
            random_direction(evaluator.weights, seed=0),
            random_direction(evaluator.weights, seed=1),
            steps=9,
            span=0.5,
        )
    )
    assert surfaces[-1].loss[4][4] == pytest.approx(expected, rel=1e-5)


def test_the_coarse_grid_comes_first_and_agrees_with_the_full_one(trained):
    (model, _), x, y = trained
    evaluator = LossEvaluator(model, x, y)
    d1, d2 = random_direction(evaluator.weights, seed=0), random_direction(evaluator.weights, seed=1)
    reports = []
    coarse, full = iter_surface(evaluator, d1, d2, steps=9, span=1.0, coarse_stride=4, on_progress=reports.append)
    assert not coarse.complete and full.complete
    known = [(i, j) for j in range(9) for i in range(9) if coarse.loss[j][i] is not None]
    assert sorted(known) == sorted((i, j) for i in (0, 4, 8) for j in (0, 4, 8))
    assert all(coarse.loss[j][i] == full.loss[j][i] for i, j in known)
    assert all(v is not None for row in full.loss for v in row)
    assert reports[-1].done == reports[-1].total == 81


def test_batched_points_with_vmap_equal_the_loop(trained):
    (model, _), x, y = trained
    loop, batched = LossEvaluator(model, x, y, batch_points=False), LossEvaluator(model, x, y, batch_points=True)
    direction = random_direction(loop.weights, seed=0)
    a, b = slice_1d(loop, direction, steps=21), slice_1d(batched, direction, steps=21)
    assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.accuracy == pytest.approx(b.accuracy)


def test_the_line_between_two_runs_ends_at_each_runs_loss(trained):
    (a, b), x, y = trained
    line = line_between(LossEvaluator(a, x, y), {n: p.detach() for n, p in b.named_parameters()}, steps=11, margin=0.2)
    start, end = line.axis.index(0.0), line.axis.index(1.0)
    assert line.loss[start] == pytest.approx(evaluate(a, x, y)[0], rel=1e-5)
    assert line.loss[end] == pytest.approx(evaluate(b, x, y)[0], rel=1e-5)


def test_noise_robustness_is_zero_without_noise_and_grows_with_it(trained):
    (model, _), x, y = trained
    result = noise_robustness(LossEvaluator(model, x, y), scales=(0.0, 0.05, 0.5), draws=4)
    assert result.mean_increase[0] == 0.0 and result.std_increase[0] == 0.0
    assert result.mean_increase[2] > result.mean_increase[1]


def test_bad_grids_are_refused(trained):
    (model, other), x, y = trained
    evaluator = LossEvaluator(model, x, y)
    with pytest.raises(ConfigError, match="steps must be odd"):
        slice_1d(evaluator, random_direction(evaluator.weights, seed=0), steps=10)
    with pytest.raises(ConfigError, match="different architectures"):
        line_between(evaluator, {"w": torch.zeros(1)})
