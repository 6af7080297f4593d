"""Fisher trace: the vectorised version equals the per-example loop, and the callback records it."""
import pytest
import torch
from torch import nn

from indistill_lab.data import DatasetInfo, Loader, Split
from indistill_lab.fisher import (FisherTraceCallback, fisher_trace, fisher_trace_loop, parameter_group,
                                  sample_labels)
from indistill_lab.models import ConvNet
from indistill_lab.train import Trainer


def tiny_model() -> ConvNet:
    torch.manual_seed(0)
    model = ConvNet(widths=(3, 4), fc=(6,), image_size=8, num_classes=3)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(torch.randn(32, 1, 8, 8) * 2 + 1)
    return model


def test_vmap_matches_per_example_loop_and_restores_train_mode():
    model, x = tiny_model(), torch.randn(10, 1, 8, 8)
    labels = sample_labels(model, x, torch.Generator().manual_seed(1))
    fast = fisher_trace(model, x, labels, chunk_size=3)
    slow = fisher_trace_loop(model, x, labels)
    assert model.training  # both computations run in eval mode and restore the mode
    assert set(fast) == set(slow) == {"stage1.conv1", "stage1.bn1", "stage2.conv1", "stage2.bn1", "fc1", "classifier"}
    for k in slow:
        assert fast[k] == pytest.approx(slow[k], rel=1e-4, abs=1e-9)


def test_grouping_by_depth_sums_the_finer_groups():
    model, x = tiny_model(), torch.randn(6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    fine, coarse = fisher_trace(model, x, labels), fisher_trace(model, x, labels, depth=1, chunk_size=None)
    assert coarse["stage1"] == pytest.approx(fine["stage1.conv1"] + fine["stage1.bn1"], rel=1e-5)
    assert parameter_group("stage2.conv1.weight") == "stage2.conv1"
    assert parameter_group("stage2.conv1.weight", depth=1) == "stage2"
    assert parameter_group("classifier.bias", depth=3) == "classifier"


def test_hand_computed_trace_of_a_linear_softmax_model():
    # logits = W x (no bias); grad_W of -log p(y|x) = (p - e_y) x^T, so ||grad||^2 = ||p - e_y||^2 ||x||^2.
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()  # p = (1/2, 1/2) for every x
    x, y = torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([0, 1])
    expected = (0.5 * 5 + 0.5 * 9) / 2  # ||p - e_y||^2 = 1/4 + 1/4
    assert fisher_trace(model, x, y)["weight"] == pytest.approx(expected)


def test_labels_come_from_the_model_not_the_data():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([-50.0, 50.0, -50.0]))  # the model always predicts class 1
    assert sample_labels(model, torch.randn(20, 2)).tolist() == [1] * 20


def test_bad_inputs_say_what_is_wrong():
    model = tiny_model()
    with pytest.raises(ValueError, match="labels must have shape"):
        fisher_trace(model, torch.randn(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="depth must be"):
        parameter_group("a.b", depth=0)
    with pytest.raises(ValueError, match="every_steps"):
        FisherTraceCallback(torch.randn(2, 1, 8, 8), every_steps=0)


def test_callback_records_before_training_and_after_each_epoch():
    g = torch.Generator().manual_seed(0)
    info = DatasetInfo("toy", 1, 8, 3, ("a", "b", "c"), (0.0,), (1.0,))
    data = Split(torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g), info, "toy")
    model = tiny_model()
    cb = FisherTraceCallback(data.x[:8], depth=1)
    Trainer(model, callbacks=[cb], progress=False, device="cpu").fit(Loader(data, 16), epochs=2)
    assert [r["step"] for r in cb.records] == [0, 3, 6]
    assert cb.epochs() == [0.0, 1.0, 2.0]
    assert len(cb.series("stage1")) == 3
    assert cb.series("total")[0] == pytest.approx(sum(cb.records[0]["trace"].values()))
    with pytest.raises(KeyError, match="layers: stage1"):
        cb.series("stage9")
    stepwise = FisherTraceCallback(data.x[:8], every_steps=2)
    Trainer(tiny_model(), callbacks=[stepwise], progress=False, device="cpu").fit(Loader(data, 16), epochs=2)
    assert [r["step"] for r in stepwise.records] == [0, 2, 4, 6]
