import pytest
import torch

from indistill_lab.models import build_model
from indistill_lab.taps import Taps, get_module, tap


def test_taps_record_outputs_and_always_remove_hooks():
    model = build_model("student").eval()
    x = torch.randn(4, 1, 28, 28)
    with Taps(model, ["stage1", "stage3", "act_fc1"]) as taps:
        logits = model(x)
    assert taps["stage1"].shape == (4, 8, 14, 14) and taps["stage3"].shape == (4, 32, 3, 3)
    assert torch.allclose(taps["act_fc1"], model.embed(x))
    assert taps["stage1"].requires_grad  # not detached by default: losses can backprop
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        with Taps(model, ["stage2"]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    assert logits.shape == (4, 10)


def test_tap_helper_detaches():
    model = build_model("student")
    out = tap(model, torch.randn(2, 1, 28, 28), ["stage2.conv1"])
    assert out["stage2.conv1"].shape == (2, 16, 14, 14) and not out["stage2.conv1"].requires_grad


def test_unknown_path_lists_valid_paths_and_suggests():
    model = build_model("student")
    with pytest.raises(KeyError) as err:
        Taps(model, ["stage4"])
    msg = str(err.value)
    assert "Unknown layer path 'stage4'" in msg and "Did you mean" in msg and "stage1.conv1" in msg
    with pytest.raises(KeyError, match="Unknown layer path ''"):
        get_module(model, "")


def test_reading_before_running_is_explained():
    model = build_model("student")
    with Taps(model, ["stage1"]) as taps:
        with pytest.raises(KeyError, match="inside the `with` block"):
            taps["stage1"]


def test_an_unknown_path_in_a_large_model_lists_its_top_level_modules_not_every_path():
    from torchvision.models import resnet18

    with pytest.raises(KeyError) as info:
        get_module(resnet18(), "layer5")
    message = info.value.args[0]
    assert "Did you mean 'layer1'" in message or "'layer4'" in message
    assert "Its top-level modules: conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc" in message
    assert "layer1.0.conv1" not in message and len(message) < 400
