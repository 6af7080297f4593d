"""Self-distillation (DRG + DSR): head shapes, where gradients flow, DSR by hand with its first-batch skip
and reset on resume, an exported model without heads, clear errors, and a torchvision ResNet-18."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from indistill_lab.data import Loader, Split, dataset_info
from indistill_lab.methods import Context, get_method, method_names
from indistill_lab.methods.self_distillation import SelfKD, sgd_schedule
from indistill_lab.models import build_model, model_from_config
from indistill_lab.pipeline import RunConfig
from indistill_lab.self_distillation import AttentionHead, SelfDistillation, default_stages, sorted_probabilities
from indistill_lab.train import Callback, Trainer


class _Keys(Callback):
    """Records the loss-term names of every batch."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def on_batch_end(self, trainer, logs):
        self.keys.append(set(logs))


def test_head_shapes_and_attention_mask_match_the_stage_even_on_odd_sides():
    head = AttentionHead(16, 10)
    for side in (14, 7):
        x = torch.randn(3, 16, side, side)
        mask = head.attention(x)
        assert mask.shape == x.shape and bool(((mask > 0) & (mask < 1)).all())
        assert head(x).shape == (3, 10)
    student = build_model("student")
    objective = SelfDistillation(student, torch.randn(2, 1, 28, 28), stages=["stage1", "stage2"])
    logits, heads = objective.head_logits(student, torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10) and {s: z.shape for s, z in heads.items()} == {"stage1": (5, 10), "stage2": (5, 10)}
    masks = objective.attention_masks(student, torch.randn(4, 1, 28, 28))
    assert masks["stage1"].shape == (4, 14, 14) and masks["stage2"].shape == (4, 7, 7)
    assert default_stages(student, torch.randn(2, 1, 28, 28)) == ["stage2"]  # stage3 is 3x3: too small


def test_drg_does_not_reach_the_head_but_the_head_ce_does():
    student = build_model("student")
    objective = SelfDistillation(student, torch.randn(2, 1, 28, 28), stages=["stage1"], dsr=False)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    terms = objective(student, x, y)
    assert set(terms) == {"ce", "ce_head", "drg"} and terms["drg"].item() > 0
    terms["drg"].backward()
    head_grads = [p.grad for p in objective.heads.parameters()]
    assert all(g is None or not g.any() for g in head_grads)  # the head's output is the detached teacher
    assert student.classifier.weight.grad.abs().sum() > 0  # the final output is what DRG moves
    student.zero_grad(), objective.zero_grad()
    objective(student, x, y)["ce_head"].backward()
    assert objective.heads[0].fc.weight.grad.abs().sum() > 0
    assert student.stage1[0].weight.grad.abs().sum() > 0  # the head's CE trains the shallow stage too


def _hand_dsr(current: list[float], previous: list[float], T: float) -> float:
    """T^2 * KL(softmax(sort(previous)/T) || softmax(sort(current)/T)) for one sample, in plain Python."""
    def soft(v: list[float]) -> list[float]:
        e = [math.exp(a / T) for a in sorted(v)]
        return [a / sum(e) for a in e]
    p, q = soft(previous), soft(current)
    return T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_dsr_equals_a_hand_computation_and_is_skipped_on_an_epoch_first_batch():
    model = nn.Identity()  # the "logits" are the inputs, so the batches are chosen by hand
    objective = SelfDistillation(model, torch.zeros(1, 3), drg=False, beta=0.5, temperature=2.0)
    first = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 4.0]])
    second = torch.tensor([[1.0, -1.0, 0.5], [2.0, 1.0, 0.0]])
    y = torch.tensor([0, 1])
    objective.on_epoch_start(0)
    assert set(objective(model, first, y)) == {"ce"}  # nothing to compare with yet
    dsr = objective(model, second, y)["dsr"].item()
    hand = 0.5 * sum(_hand_dsr(second[i].tolist(), first[i].tolist(), 2.0) for i in range(2)) / 2
    assert dsr == pytest.approx(hand, rel=1e-5)
    smaller = torch.tensor([[0.0, 1.0, 2.0]])  # an epoch's last, smaller batch: compared with the first rows
    assert objective(model, smaller, y[:1])["dsr"].item() == pytest.approx(
        0.5 * _hand_dsr([0.0, 1.0, 2.0], second[0].tolist(), 2.0), rel=1e-4)  # float32
    objective.on_epoch_start(1)
    assert "dsr" not in objective(model, second, y)


def test_dsr_state_resets_each_epoch_and_on_resume_and_is_never_checkpointed(tiny_split, tmp_path):
    student = build_model("student")
    objective = SelfDistillation(student, tiny_split.x[:2], dsr=True)
    keys = _Keys()
    loader = Loader(tiny_split, batch_size=16, seed=0)
    trainer = Trainer(student, objective, checkpoint=tmp_path / "ck.pt", callbacks=[keys], progress=False)
    trainer.fit(loader, 2)
    per_epoch = len(loader)
    assert [("dsr" in k) for k in keys.keys] == ([False] + [True] * (per_epoch - 1)) * 2
    assert objective.previous is not None and "previous" not in "".join(objective.state_dict())
    resumed_keys = _Keys()
    resumed = Trainer(student, objective, checkpoint=tmp_path / "ck.pt", callbacks=[resumed_keys], progress=False)
    assert resumed.resume() and resumed.epoch == 2
    resumed.fit(loader, 3)  # the stale batch of epoch 2 is not compared with epoch 3's first batch
    assert [("dsr" in k) for k in resumed_keys.keys] == [False] + [True] * (per_epoch - 1)


def test_exported_student_has_no_head_and_equals_the_backbone(tiny_split):
    cfg = RunConfig(epoch_size=32, batch_size=16)
    trained = get_method("self-drg-dsr").train(Context(cfg, tiny_split), seed=0, epochs=1)
    student, objective = trained.student, trained.extras["objective"]
    fresh = build_model("student")
    assert list(student.state_dict()) == list(fresh.state_dict())
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in fresh.parameters())
    assert sum(p.numel() for p in objective.heads.parameters()) > 0 and trained.trains_head
    assert not any(m._forward_hooks for m in student.modules())  # no tap left behind
    backbone = model_from_config(student.config())
    backbone.load_state_dict(student.state_dict())
    x = tiny_split.x[:8]
    with torch.no_grad():
        assert torch.equal(student(x), backbone.eval()(x))
        in_training, heads = objective.head_logits(student, x)  # the forward the loop ran, the heads' taps attached
        assert torch.equal(student(x), in_training) and len(heads) == 1
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), backbone.state_dict().values()))


def test_bad_inputs_give_clear_errors():
    student, x = build_model("student"), torch.randn(2, 1, 28, 28)
    with pytest.raises(KeyError, match="Unknown layer path 'stage7'.*Valid paths"):
        SelfDistillation(student, x, stages=["stage7"])
    with pytest.raises(ValueError, match="'stage3' is 3x3: too small for the head's stride-2 branch"):
        SelfDistillation(student, x, stages=["stage3"])
    for T in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature T must be > 0"):
            SelfDistillation(student, x, temperature=T)
    with pytest.raises(ValueError, match="at least one stage"):
        SelfDistillation(student, x, stages=[])
    with pytest.raises(ValueError, match="optimizer must be 'adam'"):
        SelfKD("rmsprop")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sorted_probabilities(torch.randn(2, 3), 0.0)


def test_works_on_a_torchvision_resnet18_at_small_input():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    objective = SelfDistillation(model, x[:2])
    assert objective.stages == ["layer2"]  # 4x4 at 32x32 input; layer3 is 2x2
    with pytest.raises(ValueError, match="'layer3' is 2x2"):
        SelfDistillation(model, x[:2], stages=["layer3"])
    trainer = Trainer(model, objective, progress=False)
    keys = _Keys()
    trainer.callbacks.append(keys)
    trainer.fit(Loader(Split(x, y, dataset_info("cifar10"), "toy"), batch_size=4, shuffle=False), 1)
    assert keys.keys == [{"ce", "ce_head", "drg", "loss"}, {"ce", "ce_head", "drg", "dsr", "loss"}]
    assert math.isfinite(trainer.history.epochs[0]["loss"])


def test_registered_methods_and_the_paper_sgd_schedule():
    assert {"self-drg", "self-dsr", "self-drg-dsr"} <= set(method_names())
    assert (get_method("self-drg").use_dsr, get_method("self-dsr").use_drg) == (False, False)
    assert sgd_schedule(200) == {60: pytest.approx(0.01), 120: pytest.approx(0.001), 160: pytest.approx(0.0001)}


def test_sorted_probabilities_are_descending_and_sum_to_one():
    p = sorted_probabilities(torch.tensor([[0.0, 3.0, 1.0], [2.0, 2.0, 2.0]]), temperature=2.0)
    assert torch.allclose(p.sum(1), torch.ones(2)) and bool((p[:, :-1] >= p[:, 1:]).all())
    assert torch.allclose(p[1], torch.full((3,), 1 / 3))
