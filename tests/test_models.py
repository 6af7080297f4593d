import pytest
import torch

from indistill_lab.metrics import count_parameters
from indistill_lab.models import ConvNet, PreActResNet18, build_model, model_from_config


def test_paper_architectures_have_the_paper_sizes():
    # docs/methods.md: auxiliary ~58k params, student ~15k, on 32x32x3 with unpadded convs.
    assert count_parameters(ConvNet((16, 32, 64), (128,), 3, 32, padding=0)) == 57_994
    assert count_parameters(ConvNet((8, 16, 32), (64,), 3, 32, padding=0)) == 15_050


@pytest.mark.parametrize("name", ["teacher", "auxiliary", "student"])
def test_models_adapt_to_input_and_expose_paths(name):
    for dataset, shape in [("fashion-mnist", (2, 1, 28, 28)), ("cifar10", (2, 3, 32, 32))]:
        model = build_model(name, dataset)
        x = torch.randn(shape)
        assert model(x).shape == (2, 10)
        assert model.embed(x).shape == (2, model.fc_sizes[-1])
        assert model.stage_paths == ["stage1", "stage2", "stage3"]
        names = dict(model.named_modules())
        assert model.embedding_path in names
        assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_widths_and_config_roundtrip():
    model = build_model("auxiliary")
    assert model.widths == [16, 32, 64]
    clone = model_from_config(model.config())
    clone.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 28, 28)
    model.eval(), clone.eval()
    assert torch.allclose(model(x), clone(x))


def test_preact_resnet18_embedding_is_512d():
    model = PreActResNet18()
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert 11_000_000 < count_parameters(model) < 11_300_000


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="positive ints"):
        ConvNet((8, 0, 32), (64,))
    with pytest.raises(ValueError, match="too small"):
        ConvNet((8, 16, 32, 64, 128), (64,), image_size=8, padding=0)
    with pytest.raises(KeyError, match="Known: teacher"):
        build_model("giant")
