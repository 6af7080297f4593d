"""Per-layer difficulty: monotone in constructed cases, interpolation by hand, the table feeds a curriculum."""
import copy

import pytest
import torch

from indistill_lab.curriculum import Curriculum
from indistill_lab.data import DatasetInfo, Split
from indistill_lab.difficulty import (curriculum_from_table, difficulty_table, distil_alone, epochs_to_fraction,
                                      start_gap)
from indistill_lab.models import ConvNet

INFO = DatasetInfo("toy", 1, 8, 3, ("a", "b", "c"), (0.0,), (1.0,))
PAIRS = [("stage1", "stage1"), ("stage2", "stage2")]


def student() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(widths=(4, 6), fc=(8,), image_size=8, num_classes=3).eval()


def toy_data(n: int = 64) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g), INFO, "toy")


def scaled_teacher(s: ConvNet, k: float) -> ConvNet:
    """The student with stage1's BN scale and shift multiplied by `k`: its stage1 features are k times the
    student's (ReLU and max-pool commute with positive scaling), so the student has (k - 1) times as far to go."""
    t = copy.deepcopy(s)
    with torch.no_grad():
        t.stage1.bn1.weight.mul_(k)
        t.stage1.bn1.bias.mul_(k)
    return t


def test_start_gap_grows_with_the_teachers_distance():
    s, x = student(), toy_data(48).x
    torch.manual_seed(5)
    gaps = []
    for sigma in (0.0, 0.3, 3.0):
        t = copy.deepcopy(s)
        with torch.no_grad():
            for p in t.parameters():
                p.add_(sigma * p.std() * torch.randn_like(p))
        gaps.append(start_gap(t, s, PAIRS, x))
    for k in range(len(PAIRS)):
        assert gaps[0][k]["one_minus_cka"] == pytest.approx(0.0, abs=1e-9)
        assert gaps[0][k]["initial_mse"] == 0.0
        assert gaps[0][k]["one_minus_cka"] < gaps[1][k]["one_minus_cka"] < gaps[2][k]["one_minus_cka"]
        assert gaps[0][k]["initial_mse"] < gaps[1][k]["initial_mse"] < gaps[2][k]["initial_mse"]


def test_epochs_to_fraction_grow_with_the_distance_to_learn():
    # full-batch Adam (one step per epoch, no minibatch noise) moves at a roughly constant speed
    s, data = student(), toy_data(32)
    curves = [distil_alone(scaled_teacher(s, k), s, PAIRS[0], data, data.x[:16], epochs=14, lr=0.02, batch_size=32,
                           evals_per_epoch=1) for k in (1.5, 2.5, 4.0)]
    reached = [epochs_to_fraction(c["epoch"], c["loss"], 0.5) for c in curves]
    assert None not in reached
    assert reached[0] < reached[1] < reached[2]
    assert curves[0]["epoch"][:3] == [0.0, 1.0, 2.0]  # measured before training, then after every epoch


def test_interpolation_by_hand_and_errors():
    assert epochs_to_fraction([0, 1, 2], [10.0, 6.0, 2.0], 0.5) == pytest.approx(1.25)
    assert epochs_to_fraction([0, 1], [4.0, 2.0], 0.5) == 1.0
    assert epochs_to_fraction([0, 1], [4.0, 3.0], 0.5) is None
    with pytest.raises(ValueError, match="fraction must lie"):
        epochs_to_fraction([0, 1], [4.0, 3.0], 1.5)


def test_table_rows_and_the_curriculum_they_produce():
    s, data = student(), toy_data(32)
    table = difficulty_table(scaled_teacher(s, 2.0), s, PAIRS, data, data.x[:16], epochs=2, lr=0.02, batch_size=16)
    assert [(r["teacher"], r["student"]) for r in table["rows"]] == PAIRS
    for row in table["rows"]:
        assert row["epochs_to_fraction"] <= 2.0 and (row["reached"] or row["epochs_to_fraction"] == 2.0)
        assert row["curve"]["loss"][0] == pytest.approx(row["initial_mse"], rel=1e-4)
    table["rows"][0]["epochs_to_fraction"], table["rows"][1]["epochs_to_fraction"] = 1.0, 3.0
    c = curriculum_from_table(table, "epochs_to_fraction", budget=6, final=None, total_epochs=6)
    assert isinstance(c, Curriculum)
    assert [p.epochs for p in c.phases] == [2, 4]  # 1 + 4 * 1/4 and 1 + 4 * 3/4
    with pytest.raises(KeyError, match="Unknown difficulty column"):
        curriculum_from_table(table, "loss", budget=6, final=None, total_epochs=6)
