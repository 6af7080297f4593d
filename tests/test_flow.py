"""Flow paths: hand-computed attributions, link strengths and paths on a two-layer net with known weights, and the
causal check (zeroing channels) on a net where one known channel carries one class."""
import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from indistill_lab.flow import (FlowLayer, ablation_check, ablation_summary, busiest_channels, chance_survival,
                                channel_attributions, channels_zeroed, class_attributions, class_score,
                                connection_strength, flow_layers, flow_paths, path_channels, path_survival, surviving,
                                to_original_indices, top_paths)
from indistill_lab.models import ConvNet
from indistill_lab.pruning import prune_to_widths


def two_layer_net() -> nn.Module:
    """1x1 convs on a 1x1 image: h1 = relu(W1 x), h2 = relu(W2 h1), logit0 = h2[0] + h2[1]."""
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 2, 1, bias=False), act1=nn.ReLU(),
        conv2=nn.Conv2d(2, 2, 1, bias=False), act2=nn.ReLU(),
        flatten=nn.Flatten(), fc=nn.Linear(2, 2, bias=False)))
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor([2.0, 1.0]).view(2, 1, 1, 1))
        net.conv2.weight.copy_(torch.tensor([[1.0, 3.0], [1.0, 0.0]]).view(2, 2, 1, 1))
        net.fc.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    return net.eval()


def test_layers_attributions_strengths_and_paths_of_the_hand_built_net():
    net, x = two_layer_net(), torch.ones(1, 1, 1, 1)
    layers = flow_layers(net)
    assert layers == [FlowLayer("conv1", None, "act1"), FlowLayer("conv2", None, "act2")]
    # h1 = (2, 1), dlogit/dh1 = (1 + 1, 3 + 0): contributions (4, 3); h2 = (5, 2): contributions (5, 2).
    a1, a2 = channel_attributions(net, x[0], target=0)
    assert a1.tolist() == pytest.approx([4 / 7, 3 / 7], abs=1e-5)
    assert a2.tolist() == pytest.approx([5 / 7, 2 / 7], abs=1e-5)
    (s,) = connection_strength(net, layers)
    assert s.flatten().tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 0.0])
    # scores a1(i) s(j, i) a2(j): (1,0) 45/147, (0,0) 20/147, (0,1) 8/147; (1,1) has a zero connection
    result = flow_paths(net, x, target=0, n_paths=10)
    assert [p for p, _ in result.paths] == [(1, 0), (0, 0), (0, 1)]
    assert [v for _, v in result.paths] == pytest.approx([45 / 147, 20 / 147, 8 / 147], rel=1e-4)


def test_batchnorm_scale_enters_the_connection_strength():
    model = ConvNet(widths=(2, 2), fc=(4,), image_size=4, num_classes=2).eval()
    with torch.no_grad():
        model.stage2.conv1.weight.fill_(1.0)
        model.stage2.bn1.weight.copy_(torch.tensor([1.0, -4.0]))
        model.stage2.bn1.running_var.fill_(1.0 - model.stage2.bn1.eps)
    (s,) = connection_strength(model, flow_layers(model))
    assert s.flatten().tolist() == pytest.approx([0.25, 0.25, 1.0, 1.0])


def test_dynamic_programming_finds_the_same_paths_as_brute_force():
    g = torch.Generator().manual_seed(0)
    widths = (4, 5, 3, 6)
    attrs = [torch.rand(w, generator=g) for w in widths]
    strengths = [torch.rand(b, a, generator=g) for a, b in zip(widths, widths[1:])]
    brute = sorted(((c, float(torch.tensor([attrs[l][c[l]] for l in range(4)]).prod()
                             * torch.tensor([strengths[l][c[l + 1], c[l]] for l in range(3)]).prod()))
                    for c in itertools.product(*[range(w) for w in widths])), key=lambda p: -p[1])[:7]
    found = top_paths(attrs, strengths, n_paths=7)
    assert [p for p, _ in found] == [p for p, _ in brute]
    assert [v for _, v in found] == pytest.approx([v for _, v in brute], rel=1e-6)


def test_survival_and_index_mapping():
    layers = [FlowLayer("a", None, "a"), FlowLayer("b", None, "b")]
    kept = {"a": [0, 2, 5], "b": [1, 3]}
    paths = [((2, 3), 0.5), ((1, 3), 0.3), ((5, 0), 0.1)]
    assert surviving(paths, layers, kept) == [True, False, False]
    assert surviving(paths, layers, {"a": [1, 2, 5]}) == [True, True, True]  # layer b not pruned
    assert to_original_indices([((2, 1), 0.4)], layers, kept) == [((5, 3), 0.4)]


def test_paths_of_a_pruned_model_use_kept_channels_only():
    torch.manual_seed(0)
    model = ConvNet(widths=(6, 8), fc=(8,), image_size=8, num_classes=3).eval()
    pruned, report = prune_to_widths(model, [3, 4])
    layers = flow_layers(pruned)
    result = flow_paths(pruned, torch.randn(1, 1, 8, 8), target=1, n_paths=5, n_steps=8)
    original = to_original_indices(result.paths, layers, report.kept)
    assert all(surviving(original, flow_layers(model), report.kept))
    assert all(c < 3 for (c, _), _ in result.paths)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(TypeError, match="at least two convs"):
        flow_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="strength matrix 0 has shape"):
        top_paths([torch.ones(2), torch.ones(3)], [torch.ones(2, 2)])
    with pytest.raises(ValueError, match="one input image"):
        channel_attributions(two_layer_net(), torch.ones(2, 1, 1, 1), target=0)


def test_survival_fractions_and_chance_level():
    net, x = two_layer_net(), torch.ones(2, 1, 1, 1)
    layers = flow_layers(net)
    # top paths for class 0: (1,0), (0,0), (0,1); keeping channel 0 of conv2 only keeps the first two
    result = path_survival(net, {"keep0": {"conv2": [0]}, "all": {}}, x, [0, 0], n_paths=3, n_steps=8)
    assert result["keep0"]["paths"] == pytest.approx([2 / 3, 2 / 3])
    assert result["keep0"]["channels"] == pytest.approx([5 / 6, 5 / 6])  # only (0,1) loses its conv2 channel
    assert result["all"] == {"paths": [1.0, 1.0], "channels": [1.0, 1.0]}
    assert chance_survival(layers, {"conv1": [0], "conv2": [0, 1]}, [2, 2]) == 0.5
    with pytest.raises(ValueError, match="one class per input"):
        path_survival(net, {}, x, [0])


def carrier_net() -> nn.Module:
    """1x1 convs on 1x1 images with two input channels: channel 0 of both blocks carries input 0 to logit 0,
    channel 1 carries input 1 to logit 1, channel 2 computes something that no later layer reads."""
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(2, 3, 1, bias=False), act1=nn.ReLU(),
        conv2=nn.Conv2d(3, 3, 1, bias=False), act2=nn.ReLU(),
        flatten=nn.Flatten(), fc=nn.Linear(3, 2, bias=False)))
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]).view(3, 2, 1, 1))
        net.conv2.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(3, 3, 1, 1))
        net.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    return net.eval()


def carrier_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Four images of each class: class 0 has input 0 strong, class 1 input 1."""
    g = torch.Generator().manual_seed(0)
    strong, weak = 1.0 + torch.rand(4, generator=g), 0.2 * torch.rand(4, generator=g)
    x = torch.cat([torch.stack([strong, weak], 1), torch.stack([weak, strong], 1)]).view(8, 2, 1, 1)
    return x, torch.tensor([0] * 4 + [1] * 4)


def test_zeroing_the_carrying_channel_drops_its_class_and_an_unused_one_changes_nothing():
    net, (x, y) = carrier_net(), carrier_data()
    intact = class_score(net, x, y, target=0)
    assert intact["accuracy"] == 1.0 and intact["others"] == 1.0
    with channels_zeroed(net, {"conv1": [0]}):
        cut = class_score(net, x, y, target=0)
    assert cut["logit"] == pytest.approx(0.0) and cut["accuracy"] == 0.0 and cut["others"] == 1.0
    with channels_zeroed(net, {"conv1": [2], "conv2": [2]}):
        assert class_score(net, x, y, target=0) == intact
    assert class_score(net, x, y, target=0) == intact  # the hooks are gone after the block
    with pytest.raises(RuntimeError, match="inside"):
        with channels_zeroed(net, {"conv2": [0]}):
            raise RuntimeError("inside")
    assert class_score(net, x, y, target=0) == intact  # ... even when the block raised


def test_ablation_check_finds_the_carrying_path_and_its_controls_do_nothing():
    net, (x, y) = carrier_net(), carrier_data()
    attributions = class_attributions(net, x[:4], target=0, n_steps=8)
    assert [a.argmax().item() for a in attributions] == [0, 0]
    assert [float(a.sum()) for a in attributions] == pytest.approx([1.0, 1.0])
    check = ablation_check(net, x[:4], x, y, target=0, n_paths=1, draws=3, n_steps=8)
    assert check["paths"][0][0] == [0, 0] and check["zeroed"] == {"conv1": 1, "conv2": 1}
    assert check["top paths"]["logit"] == pytest.approx(0.0) and check["top paths"]["accuracy"] == 0.0
    for control in [check["lowest"], *check["random"]]:  # channels 1 and 2 do not carry class 0
        assert control["logit"] == pytest.approx(check["intact"]["logit"]) and control["accuracy"] == 1.0
    summary = ablation_summary([check])
    assert summary["top paths"]["accuracy"][0] == 1.0 and summary["random"]["accuracy"][0] == 0.0
    assert summary["random_as_large"]["logit"] == 0.0 and summary["classes"] == 1
    paths = [((0, 2), 1.0), ((1, 2), 0.5), ((1, 0), 0.2)]
    assert path_channels(paths, flow_layers(net)) == {"conv1": [0, 1], "conv2": [0, 2]}
    assert busiest_channels(paths, flow_layers(net)) == {"conv1": (1, 2), "conv2": (2, 2)}


def test_ablation_inputs_are_checked():
    net, (x, y) = carrier_net(), carrier_data()
    with pytest.raises(KeyError, match="not a conv block"):
        with channels_zeroed(net, {"fc": [0]}):
            pass
    with pytest.raises(ValueError, match="channel\\(s\\) \\[3\\] do not exist"):
        with channels_zeroed(net, {"conv1": [3]}):
            pass
    with pytest.raises(ValueError, match="images of class 0 and of other classes"):
        class_score(net, x[:4], y[:4], target=0)
    with torch.no_grad():
        net.conv2.weight.fill_(1.0)  # now every channel carries class 0: no channels are left for a control set
    with pytest.raises(ValueError, match="leaving too few"):
        ablation_check(net, x[:4], x, y, target=0, n_paths=9, n_steps=4)
    with pytest.raises(ValueError, match="one channel per block"):
        path_channels([((0, 1, 2), 1.0)], flow_layers(net))
    with pytest.raises(ValueError, match="images of class 2 and of other classes"):
        ablation_check(net, x[:4], x, y, target=2, n_paths=1, n_steps=4)
    with pytest.raises(ValueError, match="No paths given"):
        busiest_channels([], flow_layers(net))
    with pytest.raises(ValueError, match="non-empty batch"):
        class_attributions(net, x[0], target=0)
