"""The cascade (indistill_lab.cascade, methods/cascade): levels, global masks, the straight-through
estimator by hand, shared weights, the hierarchical score gradient, export equal to the masked
model, both phases end to end, and the clear errors for bad input."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from indistill_lab.cascade import (
    LEGACY,
    Cascade,
    CascadeLoss,
    SaliencyMask,
    StraightThroughMask,
    cascade_levels,
    check_levels,
    filter_saliency,
    global_mask,
    kept_overlap,
    layers_at_floor,
    maskable_layers,
)
from indistill_lab.data import Loader
from indistill_lab.methods.cascade import CascadeSchedule, _shared_channels, student_level, train_cascade
from indistill_lab.models import ConvNet, build_model
from indistill_lab.train import Callback, CosineLR


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN parameters and statistics, so a wrongly masked BN output would show."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    return model


def _vgg() -> nn.Module:
    vgg = torchvision.models.vgg11_bn(num_classes=10)
    vgg.avgpool, vgg.classifier = nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.Flatten(), nn.Linear(512, 10))
    return vgg


def test_levels_are_evenly_spaced_and_checked():
    assert cascade_levels(0.6, 2) == [0.6, 0.4, 0.2, 0.0]
    assert cascade_levels(0.8, 0) == [0.8, 0.0]
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        cascade_levels(1.0, 1)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        check_levels([0.5, -0.1, 0.0])
    with pytest.raises(ValueError, match="decrease strictly from the student"):
        check_levels([0.3, 0.6, 0.0])
    with pytest.raises(ValueError, match="at least a student and the unpruned model"):
        check_levels([0.5])
    with pytest.raises(ValueError, match="level must be 0"):
        check_levels([0.5, 0.2])
    with pytest.raises(ValueError, match="assistants must be an int >= 0"):
        cascade_levels(0.5, -1)


@pytest.mark.parametrize("level", [0.0, 0.3, 0.5, 0.6, 0.8, 0.95])
def test_global_mask_prunes_exactly_the_fraction_and_keeps_a_filter_per_layer(level):
    sizes = [8, 16, 32]
    scores = torch.cat([torch.rand(8) - 5, torch.rand(16), torch.rand(32) + 5])  # layer 1 loses on score
    mask = global_mask(scores, sizes, level)
    assert int((mask == 0).sum()) == round(level * 56)
    assert all(chunk.sum() >= 1 for chunk in mask.split(sizes))
    if level == 0.5:  # one global threshold: every kept filter but each layer's best outscores every pruned one
        forced = torch.tensor([0, 8, 24]) + torch.stack([c.argmax() for c in scores.split(sizes)])
        free = mask.clone()
        free[forced] = 0
        assert scores[free.bool()].min() > scores[~mask.bool()].max()


def test_straight_through_gradient_matches_the_formula_by_hand():
    pre = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]], requires_grad=True)  # (1, 2 channels, 1, 2)
    mask = torch.tensor([1.0, 0.0])
    score = torch.zeros(2, requires_grad=True)
    y = StraightThroughMask.apply(pre, mask, score)
    assert y.tolist() == [[[[1.0, 2.0]], [[0.0, 0.0]]]]
    g = torch.tensor([[[[0.5, -1.0]], [[2.0, 4.0]]]])  # dL/dY
    (y * g).sum().backward()
    # dL/dS_n = sum_hw dL/dY * (X*W): channel 0: 0.5*1 - 1*2 = -1.5; channel 1 (pruned): 2*3 + 4*(-1) = 2
    assert score.grad.tolist() == [-1.5, 2.0]
    assert pre.grad.tolist() == [[[[0.5, -1.0]], [[0.0, 0.0]]]]


@pytest.fixture
def convnet_cascade() -> Cascade:
    torch.manual_seed(0)
    return Cascade(_randomise_bn(build_model("auxiliary")), cascade_levels(0.6, 2))


def test_weights_are_one_tensor_and_bn_heads_scores_are_per_model(convnet_cascade):
    c = convnet_cascade
    w = [m.stage2.conv1.weight for m in c.members]
    assert all(t is w[0] for t in w) and len({t.data_ptr() for t in w}) == 1
    assert len({id(m.stage2.bn1.weight) for m in c.members}) == len(c)
    assert len({id(m.classifier.weight) for m in c.members}) == len(c)
    convs = sum(p.numel() for n, p in c.members[0].named_parameters() if "conv" in n)
    others = sum(p.numel() for n, p in c.members[0].named_parameters() if "conv" not in n)
    assert sum(p.numel() for p in c.parameters()) == convs + len(c) * (others + sum(c.sizes))
    c(torch.randn(4, 1, 28, 28))[2].sum().backward()  # the top model's gradient reaches the student's convs
    assert c.members[0].stage2.conv1.weight.grad.abs().sum() > 0
    assert c.layers == ["stage2.conv1", "stage3.conv1"] and c.hint_paths == ["stage2.bn1", "stage3.bn1"]


def test_each_model_prunes_exactly_its_level(convnet_cascade):
    c = convnet_cascade
    with torch.no_grad():
        for s in c.scores:
            s.normal_()
    for i, k in enumerate(c.levels):
        assert int((c.mask(i) == 0).sum()) == round(k * 96)
        assert sum(len(v) for v in c.kept(i).values()) == 96 - round(k * 96)


def test_score_gradient_is_hierarchical(convnet_cascade):
    c = convnet_cascade
    x = torch.randn(4, 1, 28, 28)
    c(x)[0].sum().backward()  # the student's loss trains no mask
    assert all(s.grad is None or not s.grad.any() for s in c.scores)
    c.zero_grad()
    c(x)[1].sum().backward()  # the first assistant's loss trains the student's scores
    assert c.scores[0].grad.abs().sum() > 0 and (c.scores[1].grad is None or not c.scores[1].grad.any())
    flat = Cascade(build_model("auxiliary"), [0.5, 0.0], hierarchical=False)
    flat(x)[0].sum().backward()
    assert flat.scores[0].grad.abs().sum() > 0


@pytest.mark.parametrize("make, shape", [(lambda: build_model("auxiliary"), None),
                                         (lambda: build_model("teacher"), None),
                                         (_vgg, (3, 32, 32)),
                                         (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32))])
def test_export_equals_the_masked_model(make, shape):
    torch.manual_seed(0)
    c = Cascade(_randomise_bn(make()), cascade_levels(0.5, 1), input_shape=shape)
    with torch.no_grad():
        for s in c.scores:
            s.normal_()  # an arbitrary mask, not the L1 initialisation
    x = torch.randn(3, *c.input_shape)
    pruned, report = c.export(0)
    with torch.no_grad():
        want = c.member(0)(x)
        assert (pruned(x) - want).abs().max() < 1e-5
    assert report.params_after < report.params_before and report.flops_after < report.flops_before
    kept = c.kept(0)
    modules = dict(pruned.named_modules())
    assert all(modules[p].out_channels == len(k) for p, k in kept.items())


def test_resnet_masks_only_block_internal_convs():
    layers = maskable_layers(torchvision.models.resnet18(), (3, 32, 32))
    assert layers == [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]


def test_bad_models_and_levels_give_clear_errors():
    with pytest.raises(ValueError, match="no maskable layer"):
        Cascade(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)), [0.5, 0.0],
                input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="fewer than the 2 masked layers"):
        Cascade(build_model("auxiliary"), [0.995, 0.0])
    no_ta = Cascade(build_model("auxiliary"), cascade_levels(0.5, 0))
    with pytest.raises(ValueError, match="has 0 assistant"):
        no_ta.assistant(1)
    with pytest.raises(ValueError, match="decrease strictly"):
        Cascade(build_model("auxiliary"), [0.0, 0.0])


def test_student_level_matches_the_kits_student():
    assert student_level(build_model("auxiliary"), build_model("student")) == pytest.approx(0.5)


class _Interrupt(Callback):
    def on_batch_end(self, trainer, logs):
        raise KeyboardInterrupt


def test_both_phases_end_to_end_and_safe_stop(tiny_split, tmp_path):
    torch.manual_seed(0)
    net = build_model("auxiliary")
    loader = Loader(tiny_split, 16, seed=0)
    schedule = CascadeSchedule(joint_epochs=2, student_epochs=2, low_epochs=1, record_every=2)
    result = train_cascade(net, cascade_levels(0.5, 1), loader, schedule, (tiny_split.x, tiny_split.y),
                           checkpoint_dir=tmp_path)
    assert [e["phase"] for e in result.history.epochs] == ["joint"] * 2 + ["student"] * 2
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in result.history.epochs)
    assert result.student.widths[1] + result.student.widths[2] == 48  # half of the 96 masked filters
    assert [s["step"] for s in result.snapshots] == [0, 2, 4, 6, 8]  # start, every 2 steps (epochs end at 4, 8)
    assert (tmp_path / "joint.pt").is_file() and (tmp_path / "student.pt").is_file()
    assert result.student(tiny_split.x[:2]).shape == (2, 10)
    with pytest.raises(RuntimeError, match="training stopped"), pytest.warns(UserWarning, match="stopped"):
        train_cascade(net, [0.5, 0.0], loader, schedule, (tiny_split.x, tiny_split.y), callbacks=[_Interrupt()])


def test_an_in_place_relu_after_a_mask_changes_neither_losses_nor_score_gradients():
    """torchvision's ResNets and VGGs apply ReLU(inplace=True) to the masked BN output: the gate must not save
    that output for its backward, and hints must stay the masked BN output (as with the kit's ReLUs)."""
    def grads(inplace: bool) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        net = _randomise_bn(build_model("teacher"))
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = inplace
        c = Cascade(net, cascade_levels(0.5, 1))
        terms = CascadeLoss(net, c.hint_paths, beta=1.0)(c, torch.randn(8, 1, 28, 28), torch.arange(8) % 10, 0)
        sum(terms.values()).backward()
        return {k: v.detach() for k, v in terms.items()}, [s.grad.clone() for s in c.scores[:-1]]

    (plain, plain_grads), (inplace, inplace_grads) = grads(False), grads(True)
    assert all(torch.allclose(plain[k], inplace[k], rtol=1e-5) for k in plain)
    assert all(g.abs().sum() > 0 and torch.allclose(g, h, rtol=1e-4, atol=1e-7)
               for g, h in zip(plain_grads, inplace_grads))


def test_cascade_loss_terms_are_finite_for_every_model(convnet_cascade):
    net = build_model("auxiliary")
    loss = CascadeLoss(net, convnet_cascade.hint_paths)
    terms = loss(convnet_cascade, torch.randn(8, 1, 28, 28), torch.arange(8) % 10, 0)
    assert list(terms) == ["L0", "L1", "L2", "L3"] and all(torch.isfinite(v) for v in terms.values())


# -- mask learning that measures saliency (issue 22) -------------------------------------------------------

def _net_that_ignores_filter_b(tiny_split) -> ConvNet:
    """Two stages of 2 filters, trained a little; the head never reads stage 2's filter 1 (B), so removing B
    leaves the loss unchanged while removing filter 0 (A) changes it."""
    torch.manual_seed(0)
    net = ConvNet((2, 2), (8,))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(tiny_split.x), tiny_split.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            net.fc1.weight[:, 49:98] = 0.0  # stage 2 output is 2 x 7 x 7: columns 49.. read filter B
    return net.eval()


def _loss_without(net: ConvNet, split, channel: int | None) -> float:
    keep = torch.ones(1, 2, 1, 1)
    if channel is not None:
        keep[0, channel] = 0.0
    hook = net.stage2.bn1.register_forward_hook(lambda _m, _i, out: out * keep)
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(net(split.x), split.y))
    hook.remove()
    return loss


def test_saliency_scores_rank_a_needed_filter_above_an_unused_one(tiny_split):
    net = _net_that_ignores_filter_b(tiny_split)
    full = _loss_without(net, tiny_split, None)
    assert _loss_without(net, tiny_split, 0) > full + 0.1  # the premise: A matters, B does not
    assert _loss_without(net, tiny_split, 1) == pytest.approx(full, abs=1e-6)
    c = Cascade(net, [0.5, 0.0])
    assert c.layers == ["stage2.conv1"]
    with torch.no_grad():
        c.scores[0].fill_(1.0)  # no head start for either filter
    loss = CascadeLoss(net, c.hint_paths)
    opt = torch.optim.SGD(c.scores.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        sum(loss(c, tiny_split.x, tiny_split.y, 0).values()).backward()
        opt.step()
    a, b = c.scores[0].tolist()
    assert a > 1.5 and b < 0.5  # toward A's relative saliency (about 2) and B's (0)
    assert c.kept(0) == {"stage2.conv1": [0]}


def _settled_bn_batch() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """conv -> BN -> (gate) -> linear head with BN's scale and shift optimised to a stationary point of the
    loss on a fixed batch (train-mode BN). No ReLU, so that no filter can settle by dying."""
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 3
    pre = conv(x).detach()
    opt = torch.optim.LBFGS(bn.parameters(), lr=0.5, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(bn(pre)), y)
        loss.backward()
        return loss
    for _ in range(5):
        opt.step(closure)
    assert max(float(p.grad.abs().max()) for p in bn.parameters()) < 1e-4  # settled
    return bn, head, pre, y


@pytest.mark.parametrize("gate", ["bn-output", "saliency"])
def test_kept_filters_score_gradient_is_not_cancelled_by_settled_bn(gate):
    bn, head, pre, y = _settled_bn_batch()
    out = bn(pre)
    out.retain_grad()
    score = torch.zeros(4, requires_grad=True)
    gated = (StraightThroughMask if gate == "bn-output" else SaliencyMask).apply(out, torch.ones(4), score)
    nn.functional.cross_entropy(head(gated), y).backward()
    per_example = (out.grad * out).flatten(2).sum(2) * len(y)  # each example's own first-order loss change
    spread = per_example.pow(2).mean(0).sqrt()
    assert (spread > 1e-3).all()  # every filter matters to some examples
    if gate == "bn-output":  # the batch sum, gamma * dL/dgamma + beta * dL/dbeta: about 0 for every filter
        assert (score.grad.abs() * len(y) < 1e-2 * spread).all()
    else:  # minus the saliency relative to the layer's mean: clearly non-zero, mean 1
        relative = filter_saliency(out.grad, out) / filter_saliency(out.grad, out).mean()
        assert torch.allclose(-score.grad, relative) and (-score.grad > 0.05).all()
        assert float(-score.grad.mean()) == pytest.approx(1.0)


def test_per_layer_normalisation_keeps_a_small_scale_layer_from_collapsing():
    torch.manual_seed(0)
    sizes = [16, 32]
    scores = torch.cat([torch.rand(16) * 1e-3, torch.rand(32)])  # layer 0 on a 1000x smaller scale
    raw, norm = global_mask(scores, sizes, 0.5), global_mask(scores, sizes, 0.5, normalise=True)
    assert raw[:16].sum() == 1 and layers_at_floor(raw, sizes) == 1  # collapsed to its floor, and reported
    assert layers_at_floor(norm, sizes) == 0 and 4 <= norm[:16].sum() <= 12
    assert norm.sum() == raw.sum() == 24
    assert layers_at_floor(torch.tensor([1., 0, 0, 1, 1, 0, 1.]), [3, 2, 2]) == 2


def test_overlap_is_the_students_kept_fraction_that_the_assistant_keeps():
    student, ta = torch.tensor([1., 1, 0, 0, 1, 1]), torch.tensor([1., 0, 1, 0, 1, 0])
    assert kept_overlap(student, ta) == 0.5  # of 4 kept, filters 0 and 4 are the TA's
    assert kept_overlap(ta, torch.ones(6)) == 1.0
    with pytest.raises(ValueError, match="keep a filter"):
        kept_overlap(torch.zeros(6), ta)
    pos, idx = _shared_channels([0, 2, 5], [2, 3, 5])  # hints: channels both keep
    assert pos.tolist() == [1, 2] and idx.tolist() == [2, 5]


@pytest.mark.parametrize("nested", [True, False])
def test_nesting_is_enforced_or_measured(nested):
    c = Cascade(build_model("auxiliary"), cascade_levels(0.6, 1), **({} if nested else LEGACY))
    with torch.no_grad():  # the student prefers exactly the filters its assistant likes least
        c.scores[1].copy_(torch.arange(96.0))
        c.scores[0].copy_(-torch.arange(96.0))
    masks = c.masks()
    assert [int((m == 0).sum()) for m in masks] == [round(k * 96) for k in c.levels]
    overlap = kept_overlap(masks[0], masks[1])
    if nested:
        assert overlap == 1.0 and kept_overlap(masks[1], masks[2]) == 1.0
    else:  # raw threshold: the TA keeps filters 29..95, the student 0..37, so 9 of its 38 are the TA's
        assert masks[1].nonzero().flatten().tolist() == list(range(29, 96))
        assert masks[0].nonzero().flatten().tolist() == list(range(38)) and overlap == 9 / 38


def test_hints_compare_only_channels_both_models_keep():
    torch.manual_seed(0)
    net = _randomise_bn(build_model("auxiliary"))
    c = Cascade(net, [0.5, 0.0], **LEGACY)
    loss = CascadeLoss(net, c.hint_paths)
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    c(x)
    w = c.hint_weights(0, torch.ones(96))
    assert torch.equal(torch.cat(list(w.values())), c.last_masks[0])
    feats = {p: torch.randn(4, 32 if "2" in p else 64, 7, 7) for p in c.hint_paths}
    target = {p: torch.randn_like(f) for p, f in feats.items()}
    moved = {p: t + 5 * (1 - w[p]).view(1, -1, 1, 1) for p, t in target.items()}  # change only pruned channels
    z = torch.randn(4, 10)
    same = [loss.model_loss(z, y, z, feats, t, w) for t in (target, moved)]
    assert same[0] == same[1] and loss.model_loss(z, y, z, feats, moved) > same[0]


def test_kd_t_squared_is_an_explicit_choice():
    net = build_model("auxiliary")
    z, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.arange(4)
    with_t2, without = (CascadeLoss(net, [], t_squared=flag).model_loss(z, y, t, {}, {}) for flag in (True, False))
    ce = nn.functional.cross_entropy(z, y)
    assert float(with_t2 - ce) == pytest.approx(225 * float(without - ce), rel=1e-4)


def test_cosine_lr_decays_per_step_and_agrees_at_epoch_starts():
    cos = CosineLR(0.008, 100)
    assert cos.at(0) == 0.008 and cos.at(50) == pytest.approx(0.004) and cos.at(100) == 0.0
    assert cos.epoch_starts(25, 4) == {e: cos.at(25 * e) for e in range(4)}
    with pytest.raises(ValueError, match="total_steps >= 1"):
        CosineLR(0.1, 0)


# -- the table driver (quick protocol, into tmp_path) --------------------------------------------------------

def test_first_versions_students_invaded_their_assistants_pruned_filters():
    from indistill_lab.experiments.cascade import old_runs

    runs = old_runs(0.8, 1)
    assert [r["seed"] for r in runs] == [0, 1, 2]
    assert all(r["overlap"][0] == 1.0 for r in runs)  # the relative-L1 start nests
    assert all(r["overlap"][-1] <= 1 / 19 for r in runs)  # at the end at most 1 of 19 is the TA's


def test_table_driver_runs_resumes_and_reports(tmp_path):
    from indistill_lab.experiments import cascade as exp

    argv = ["run", "--seeds", "1", "--arms", "prune-kd", "cascade-1ta", "--out", str(tmp_path)]
    exp.main(argv)
    table = exp.table(exp.Protocol.default(), folder=tmp_path)
    rows = table.rows()
    assert [(r["arm"], r["seed"]) for r in rows] == [("prune-kd", 0), ("cascade-1ta", 0)]
    for r in rows:
        assert len(r["widths"]) == 5 and sum(r["widths"]) == 208 - round(0.8 * 208)
        assert 0 < r["accuracy"] <= 100 and 0 < r["macs"] and r["layers_at_floor"] >= 0
    assert rows[0]["overlap"] is None and rows[1]["overlap"] == 1.0  # nested masks
    story = json.loads((exp.stories_dir(table) / "cascade-1ta-0.json").read_text())
    assert len(story["overlap"]) == len(story["snapshots"]) and story["row"]["params"] == rows[1]["params"]
    md = table.path.with_suffix(".md").read_text()
    assert "| cascade-1ta − prune-kd | s0: " in md and table.path.with_suffix(".png").is_file()
    exp.main(argv)  # resumes: nothing left to do, no duplicate rows
    assert len(table.rows()) == 2


@pytest.mark.parametrize("argv, flag", [(["run", "--arms", "nope"], "--arms"), (["run", "--workers", "0"], "--workers"),
                                        (["pilot", "--joint-epochs", "0"], "--joint-epochs"),
                                        (["run", "--seeds", "0"], "--seeds")])
def test_table_driver_names_the_bad_flag(argv, flag, tmp_path):
    from indistill_lab.errors import UsageError
    from indistill_lab.experiments import cascade as exp

    with pytest.raises(UsageError, match=flag):
        exp.main([*argv, "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_score_signals_show_the_signed_signal_at_batch_noise_and_the_squares_not():
    """On the pretrained cascade-net every masked layer's signed first-order signal |mean_i d_i| is at the
    size of batch noise (below 2 / sqrt(B) of the per-example spread), while the spread is positive: what the
    first version's scores read is noise, what the kit's read is not."""
    from indistill_lab import zoo
    from indistill_lab.cascade import score_signals
    from indistill_lab.data import load_split

    train = load_split("fashion-mnist", "train")
    x, y = train.x[:512], train.y[:512]
    cascade = Cascade(zoo.load("cascade-net"), cascade_levels(0.8, 1))
    signals = score_signals(cascade, x, y)
    assert list(signals) == [cascade.sites[p] for p in cascade.layers]
    for site, s in signals.items():
        assert s.shape == (cascade.sizes[cascade.layers.index(next(p for p in cascade.layers
                                                                   if cascade.sites[p] == site))], 2)
        assert (s[:, 1] > 0).all() and (s[:, 0] <= s[:, 1] + 1e-6).all()  # |mean| <= root mean square
        assert float((s[:, 0] / s[:, 1]).median()) < 2 / len(y) ** 0.5
