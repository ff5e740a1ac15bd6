import dataclasses
import hashlib
import json

import pytest

from dpsat_core import ConfigError, TrainConfig, config, default_delta
from dpsat_core.config import resolve_for_data


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("epsilon", 0.0, "epsilon must be a finite number > 0"),
        ("epsilon", -1.0, "epsilon must be a finite number > 0"),
        ("epsilon", float("nan"), "epsilon"),
        ("rho", -0.1, "rho must be a finite number ≥ 0"),
        ("clip_norm", 0.0, "clip_norm"),
        ("lr", -1.0, "lr"),
        ("momentum", 1.0, "momentum must be < 1"),
        ("epochs", 0, "epochs must be a whole number ≥ 1"),
        ("batch_size", 0, "batch_size"),
        ("delta", 1.5, "delta must be < 1"),
        ("noise_multiplier", -1.0, "noise_multiplier"),
        ("method", "adam", "unknown method 'adam'"),
        ("device", "tpu9", "unknown device 'tpu9'"),
        ("device", "cuda:x", "unknown device"),
        ("accountant", "moments", "unknown accountant 'moments'"),
        ("model", "resnet", "unknown model 'resnet'"),
        ("randomness", "secure", "unknown randomness 'secure': choose one of research, release"),
        ("delta_rule", "1/(100n)", "unknown delta_rule"),
    ],
)
def test_bad_values_are_named_in_the_error(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        TrainConfig(**{field: value})


def test_epsilon_and_sigma_together_are_refused():
    with pytest.raises(ConfigError, match="either epsilon"):
        TrainConfig(method="dpsgd", epsilon=2.0, noise_multiplier=1.0)


def test_private_method_defaults_to_a_target_epsilon_and_sigma_alone_is_kept():
    assert TrainConfig(method="dpsat").epsilon == 3.0
    cfg = TrainConfig(method="dpsat", noise_multiplier=1.2)
    assert cfg.epsilon is None and cfg.noise_multiplier == 1.2


def test_configs_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        TrainConfig("digits")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_hash_ignores_what_a_method_ignores_and_placement():
    a = TrainConfig(method="sgd", epsilon=1.0, rho=0.3, device="cpu")
    b = TrainConfig(method="sgd", epsilon=8.0, rho=0.0, device="auto", max_physical_batch_size=7)
    assert a.config_hash() == b.config_hash()
    assert TrainConfig(method="dpsat", rho=0.1).config_hash() != TrainConfig(method="dpsat", rho=0.2).config_hash()
    assert TrainConfig(method="dpsgd", epsilon=1).config_hash() != TrainConfig(method="dpsgd", epsilon=2).config_hash()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaterConfig(TrainConfig):
    """TrainConfig as it might look after a field is added in a later release."""

    label_smoothing: float = 0.0


def test_a_field_added_later_at_its_default_keeps_existing_hashes(monkeypatch):
    with pytest.raises(RuntimeError, match="must be listed in config.ADDED_LATER"):
        LaterConfig().config_hash()  # a new field's place in the hash must be decided
    monkeypatch.setitem(config.ADDED_LATER, "label_smoothing", 0.0)
    for fields in ({}, {"method": "dpsat", "rho": 0.1, "epsilon": 2.0}, {"method": "sgd", "lr": 0.5}):
        old = TrainConfig(**fields)
        assert LaterConfig(**fields).config_hash() == old.config_hash()
        assert LaterConfig(**fields, label_smoothing=0.1).config_hash() != old.config_hash()


def test_every_config_field_has_a_place_in_the_hash():
    placed = set(config._HASHED_SINCE_V1) | set(config.ADDED_LATER) | set(config._NOT_HASHED)
    assert {f.name for f in dataclasses.fields(TrainConfig)} == placed
    # the first version's hash, recomputed by hand: stored runs keep being found
    cfg = TrainConfig(method="dpsat", epsilon=2.0)
    # (fields added later, at the values they were introduced with, stay out of it; preprocessing and
    # delta_rule differ from theirs, so they are hashed)
    later_at_introduction = ("schema", "preprocessing_share", "audit_mode", "canaries", "randomness")
    first = {
        k: v for k, v in cfg.to_dict().items() if k not in ("device", "max_physical_batch_size", *later_at_introduction)
    }
    assert cfg.config_hash() == hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()[:16]


def test_an_audit_config_hashes_apart_from_its_ordinary_run():
    ordinary = TrainConfig(method="dpsgd", epsilon=2.0)
    audited = dataclasses.replace(ordinary, audit_mode="whitebox", canaries=1000)
    assert audited.audit and not ordinary.audit
    fewer = dataclasses.replace(audited, canaries=500)
    assert len({ordinary.config_hash(), audited.config_hash(), fewer.config_hash()}) == 3
    with pytest.raises(ConfigError, match="canaries=5 needs an audit mode"):
        TrainConfig(canaries=5)


def test_round_trip_through_a_dict_and_unknown_fields_are_refused():
    cfg = TrainConfig(method="dpsam", epsilon=2.0, rho=0.1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({**cfg.to_dict(), "sigma": 1})


@pytest.mark.parametrize(
    "n, expected, before",
    [
        (1437, 1e-5, 1e-4),
        (455, 1e-4, 1e-3),
        (999, 1e-4, 1e-3),
        (1000, 1e-4, 1e-4),
        (60000, 1e-6, 1e-5),
        (9, 1e-2, 1e-1),
    ],
)
def test_default_delta_is_the_largest_power_of_ten_at_most_a_tenth_of_one_over_n(n, expected, before):
    assert default_delta(n) == pytest.approx(expected)
    # the rule runs stored before it used: 1/n rounded down, strictly below 1/n (n·δ = 0.999 at n = 999)
    assert default_delta(n, "1/n") == pytest.approx(before) and default_delta(n, "1/n") < 1 / n


def test_every_n_gets_the_largest_power_of_ten_at_most_one_over_ten_n():
    for n in range(1, 20_001):
        assert 0.01 / n < default_delta(n) <= 0.1 / n, n


def test_a_stored_run_keeps_the_delta_it_was_trained_with():
    old = {k: v for k, v in TrainConfig(method="dpsgd").to_dict().items() if k not in ("delta_rule", "randomness")}
    stored = TrainConfig.from_stored(old)
    assert stored.delta_rule == "1/n" and stored.randomness == "research"
    assert resolve_for_data(stored, 1437) == pytest.approx(1e-4)  # what it was trained with
    assert resolve_for_data(TrainConfig(method="dpsgd"), 1437) == pytest.approx(1e-5)  # today's default
    # so today's default is a different run: never reused in place of the old one, nor in its setting
    assert TrainConfig(method="dpsgd").config_hash() != stored.config_hash()
    # an explicit δ does not depend on the rule: such runs keep their hash and are reused as before
    explicit = TrainConfig.from_stored({**old, "delta": 1e-5})
    assert TrainConfig(method="dpsgd", delta=1e-5).normalized() == explicit.normalized()
    assert TrainConfig(method="dpsgd", delta=1e-5).config_hash() == explicit.config_hash()


def test_release_randomness_is_its_own_run_and_research_keeps_the_hash():
    research = TrainConfig(method="dpsat")
    assert TrainConfig(method="dpsat", randomness="research").config_hash() == research.config_hash()
    release = TrainConfig(method="dpsat", randomness="release")
    assert release.config_hash() != research.config_hash()
    # two seeds of a release sweep are two runs; the stored config says the mode
    assert release.config_hash() != TrainConfig(method="dpsat", randomness="release", seed=1).config_hash()
    assert TrainConfig.from_stored(release.to_dict()).randomness == "release"


def test_data_dependent_checks():
    with pytest.raises(ConfigError, match=r"delta=0.01 must be < 1/n .*≤ 1/\(10n\) is recommended.*delta=1e-05"):
        resolve_for_data(TrainConfig(method="dpsgd", delta=0.01), 1437)
    with pytest.raises(ConfigError, match="batch_size=2000 exceeds the 1437"):
        resolve_for_data(TrainConfig(batch_size=2000), 1437)
    assert resolve_for_data(TrainConfig(method="dpsgd"), 1437) == pytest.approx(1e-5)


def test_release_mode_refuses_what_would_undercut_it():
    with pytest.raises(ConfigError, match="σ=0 releases without noise"):
        TrainConfig(method="dpsgd", noise_multiplier=0.0, randomness="release")
    with pytest.raises(ConfigError, match="release mode needs preprocessing='private'"):
        TrainConfig(method="dpsgd", preprocessing="fitted", randomness="release")
    reference = TrainConfig(method="sgd", preprocessing="fitted", randomness="release")  # no noise, no ε to protect
    assert reference.randomness == "release"
