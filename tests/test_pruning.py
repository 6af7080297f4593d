"""Pruning: criteria against hand computations, exact widths, hard == soft, torchvision models, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from indistill_lab.metrics import count_parameters
from indistill_lab.models import ConvNet, build_model, model_from_config
from indistill_lab.taps import tap
from indistill_lab.criteria import BNScale, L1, L2, Layer, Random, Taylor
from indistill_lab.pruning import prunable_layers, prune_to_widths, remove_masks, soft_prune, widths_for_ratio


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so 'stats kept' is something a test can see."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def small_net(convs_per_stage: int = 1) -> ConvNet:
    torch.manual_seed(0)
    return randomise_bn(ConvNet(widths=(4, 6, 8), fc=(5,), convs_per_stage=convs_per_stage))


def test_l1_keeps_top_l1_filters_and_their_weights() -> None:
    model = small_net()
    w = model.stage1.conv1.weight.data
    norms = [2.0, 9.0, 1.0, 5.0]  # each filter scaled to this L1 norm
    for i, n in enumerate(norms):
        w[i] *= n / w[i].abs().sum()
    pruned, report = prune_to_widths(model, [2, 6, 8], L1())
    assert report.kept["stage1.conv1"] == [1, 3]
    assert report.kept["stage1.bn1"] == [1, 3]
    assert torch.equal(pruned.stage1.conv1.weight, w[[1, 3]])
    assert torch.equal(pruned.stage1.conv1.bias, model.stage1.conv1.bias[[1, 3]])
    assert torch.equal(pruned.stage2.conv1.weight, model.stage2.conv1.weight[:, [1, 3]])


def test_l1_and_l2_disagree_as_computed_by_hand() -> None:
    conv = nn.Conv2d(1, 3, 3, bias=False)
    conv.weight.data.zero_()
    conv.weight.data[0, 0, 0, 0] = 2.5       # L1 2.5, L2 2.5
    conv.weight.data[1].fill_(0.5)            # L1 4.5, L2 1.5
    conv.weight.data[2, 0, 1, 1] = 0.1
    layer = Layer("c", conv)
    assert L1()(layer).tolist() == pytest.approx([2.5, 4.5, 0.1])
    assert L2()(layer).tolist() == pytest.approx([2.5, 1.5, 0.1])


def test_bn_scale_keeps_largest_absolute_gamma() -> None:
    model = small_net()
    model.stage2.bn1.weight.data = torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05, 1.0])
    _, report = prune_to_widths(model, {"stage2.conv1": 3}, BNScale())
    assert report.kept["stage2.conv1"] == [1, 3, 5]
    with pytest.raises(ValueError, match="needs an affine BatchNorm"):
        BNScale()(Layer("fc", nn.Linear(2, 2)))


def test_taylor_is_exact_when_the_loss_is_linear_in_the_channel() -> None:
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 16, 2)))
    x, y = torch.randn(5, 1, 6, 6), torch.zeros(5, dtype=torch.long)
    loss_fn = lambda m, xb, yb: m(xb).sum()  # noqa: E731  linear in the BN output
    crit = Taylor([(x, y)], loss_fn=loss_fn)
    layer = Layer("0", model[0], model[1])
    crit.prepare(model, [layer])
    full = loss_fn(model, x, y).item()
    for c in range(3):
        mask = torch.ones(3)
        mask[c] = 0
        h = model[1].register_forward_hook(lambda _m, _i, out: out * mask.view(1, -1, 1, 1))
        ablated = loss_fn(model, x, y).item()
        h.remove()
        assert crit(layer)[c].item() == pytest.approx(abs(full - ablated) / len(x), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_random_is_seeded_and_differs_between_seeds() -> None:
    layer = Layer("stage1.conv1", nn.Conv2d(1, 16, 3))
    assert torch.equal(Random(3)(layer), Random(3)(layer))
    assert not torch.equal(Random(3)(layer), Random(4)(layer))
    _, report = prune_to_widths(small_net(), [2, 3, 4], Random(0))
    assert [len(report.kept[f"stage{s}.conv1"]) for s in (1, 2, 3)] == [2, 3, 4]


def test_exact_widths_config_round_trip_and_kept_channels_unchanged() -> None:
    model = small_net(convs_per_stage=2)
    pruned, report = prune_to_widths(model, [2, 3, 5], L2())
    assert pruned.widths == [2, 3, 5]
    assert [pruned.stage1.conv1.out_channels, pruned.stage1.conv2.out_channels] == [2, 2]
    rebuilt = model_from_config(pruned.config())
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(rebuilt.eval()(x), pruned(x))
    # The first layer's kept channels compute exactly what they did: BN statistics and biases were kept.
    before = tap(model, x, ["stage1.act1"])["stage1.act1"][:, report.kept["stage1.conv1"]]
    assert torch.allclose(tap(pruned, x, ["stage1.act1"])["stage1.act1"], before, atol=1e-6)
    assert report.params_after == count_parameters(pruned)
    assert report.flops_after < report.flops_before


def test_student_model_gives_the_target_widths_and_paper_param_count() -> None:
    aux, student = build_model("auxiliary"), build_model("student")
    pruned, report = prune_to_widths(aux, student)
    assert pruned.widths == student.widths
    # Convs shrink to the student's, the fc head keeps the auxiliary's 128 units (InDistill leaves fcs alone).
    assert report.params_after == count_parameters(ConvNet(widths=(8, 16, 32), fc=(128,)))
    assert report.params_before == count_parameters(aux)


@pytest.mark.parametrize("criterion", [L1(), L2(), BNScale(), Random(1)], ids=lambda c: c.name)
def test_hard_pruned_equals_masked_convnet(criterion) -> None:
    model = small_net(convs_per_stage=2)
    pruned, report = prune_to_widths(model, [3, 2, 4], criterion)
    masked = soft_prune(model, report)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)
        assert not torch.allclose(model(x), masked(x), atol=1e-3)
        assert torch.allclose(remove_masks(masked)(x), model(x))


@pytest.mark.parametrize("arch, widths", [
    ("resnet18", [16, 32, 64, 128]),
    ("vgg11_bn", {"features.0": 8, "features.4": 16, "features.8": 40, "classifier.0": 100}),
])
def test_torchvision_models_run_after_pruning_and_match_masks(arch, widths) -> None:
    torch.manual_seed(0)
    model = randomise_bn(getattr(torchvision.models, arch)(num_classes=10))
    pruned, report = prune_to_widths(model, widths, L1(), input_shape=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = pruned(x)
        assert out.shape == (2, 10)
        assert torch.allclose(out, soft_prune(model, report)(x), atol=1e-4, rtol=1e-4)
    if arch == "resnet18":  # the residual stream of layer1 is coupled with the stem conv
        assert pruned.conv1.out_channels == 16 and pruned.layer4[1].conv2.out_channels == 128
        assert pruned.layer2[0].downsample[0].out_channels == 32
    else:
        assert pruned.features[8].out_channels == 40 and pruned.classifier[3].in_features == 100
    assert report.params_after < report.params_before


def test_resnet_coupled_layers_must_agree() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    groups = prunable_layers(model, (3, 32, 32))
    assert "layer1.1.conv2" in groups["layer1.0.conv2"] and "conv1" in groups["layer1.0.conv2"]
    assert groups["layer1.0.conv1"] == ["layer1.0.conv1"]
    with pytest.raises(ValueError, match="coupled with 'layer1.0.conv2'.*same width"):
        prune_to_widths(model, {"layer1.0.conv2": 32, "layer1.1.conv2": 16}, input_shape=(3, 32, 32))


def test_input_model_untouched_unless_inplace() -> None:
    model = small_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, _ = prune_to_widths(model, [2, 3, 4])
    assert model.widths == [4, 6, 8] and pruned is not model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    pruned, _ = prune_to_widths(model, [2, 3, 4], inplace=True)
    assert pruned is model and model.widths == [2, 3, 4]


@pytest.mark.parametrize("widths, error, message", [
    ([5, 6, 8], ValueError, r"Target width 5 for 'stage1.conv1' is larger than the layer \(4 channels\)"),
    ([0, 6, 8], ValueError, r"'stage1.conv1' must be a positive int, got 0"),
    ([2, -1, 8], ValueError, r"'stage2.conv1' must be a positive int, got -1"),
    ([2, 3], ValueError, r"has 3 stages \(stage1, stage2, stage3\) but 2 widths"),
    ({"stage9.conv1": 2}, KeyError, r"Unknown layer path 'stage9.conv1'.*Did you mean .*'stage1.conv1'.*Prunable layers: "),
    ({"stage1.bn1": 2}, ValueError, r"'stage1.bn1' \(BatchNorm2d\) cannot be pruned: it is not a Conv2d.*Prunable"),
    ({"classifier": 2}, ValueError, r"'classifier'.*cannot be pruned: nothing downstream reads its outputs"),
])
def test_bad_widths_get_clear_errors(widths, error, message) -> None:
    with pytest.raises(error, match=message):
        prune_to_widths(small_net(), widths)


def test_widths_for_ratio_and_its_errors() -> None:
    model = build_model("auxiliary")
    assert widths_for_ratio(model, 0.5) == [8, 16, 32]
    assert widths_for_ratio(model, [0.0, 0.25, 0.99]) == [16, 24, 1]
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        widths_for_ratio(model, 1.0)


def test_surviving_channel_matrix_by_hand() -> None:
    from indistill_lab.viz.pruning import _kept_matrix

    z = _kept_matrix({"a": [0, 2]}, {"a": 3, "b": 2})  # "b" unpruned: all kept; past its width: NaN
    assert z[0].tolist() == [1.0, 0.0, 1.0]
    assert z[1, :2].tolist() == [1.0, 1.0] and math.isnan(z[1, 2])


def test_frozen_model_is_pruned_and_stays_frozen():
    from indistill_lab.models import build_model
    from indistill_lab.pruning import prune_to_widths

    frozen = build_model("auxiliary").requires_grad_(False)
    pruned, report = prune_to_widths(frozen, [8, 16, 32])
    assert pruned.widths == [8, 16, 32] and len(report.kept["stage1.conv1"]) == 8
    assert not any(p.requires_grad for p in pruned.parameters())
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.widths == [16, 32, 64]
