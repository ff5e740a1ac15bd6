import pytest
import torch
from opacus.validators import ModuleValidator

from dpsat_core import build_model, model_spec
from dpsat_core.config import ARCHITECTURE_NAMES, MODELS
from dpsat_core.errors import ConfigError
from dpsat_core.models import ARCHITECTURES, count_parameters


@pytest.mark.parametrize(
    "kind, shape",
    [("image", (1, 8, 8)), ("image", (1, 28, 28)), ("image", (3, 32, 32)), ("tabular", (30,)), ("tabular", (40,))],
)
def test_models_fit_the_data_and_are_valid_for_opacus(kind, shape):
    model = build_model(model_spec("auto", kind=kind, input_shape=shape, n_classes=7), seed=0)
    assert model(torch.zeros(5, *shape)).shape == (5, 7)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_building_is_seeded_and_leaves_the_global_generator_alone():
    spec = model_spec("cnn", kind="image", input_shape=(1, 8, 8), n_classes=10)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_model(spec, seed=4), build_model(spec, seed=4)
    assert torch.rand(1) == expected_next
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert count_parameters(a) == sum(p.numel() for p in b.parameters())


def test_the_names_planning_checks_without_torch_are_the_models_built():
    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES and MODELS == ("auto", *ARCHITECTURE_NAMES)
    with pytest.raises(ConfigError, match="unknown model 'resnet': choose one of auto, cnn, mlp"):
        model_spec("resnet", kind="image", input_shape=(1, 8, 8), n_classes=10)
    with pytest.raises(ConfigError, match="model='cnn' needs image data"):
        model_spec("cnn", kind="tabular", input_shape=(30,), n_classes=2)
