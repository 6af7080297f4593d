"""Per-layer difficulty: measures on comparable scales, monotone in constructed cases, censoring reported and kept out
of the curriculum rule."""
import copy

import pytest
import torch

from indistill_lab.curriculum import Curriculum
from indistill_lab.data import DatasetInfo, Split
from indistill_lab.difficulty import (at_budget, curriculum_from_table, difficulty_table, distil_alone,
                                      layer_difficulty, normalised_mse, start_gap, steps_label, steps_to_fraction,
                                      table_text)
from indistill_lab.losses import FeatureMSE
from indistill_lab.models import ConvNet
from indistill_lab.taps import features

INFO = DatasetInfo("toy", 1, 8, 3, ("a", "b", "c"), (0.0,), (1.0,))
PAIRS = [("stage1", "stage1"), ("stage2", "stage2")]


def student() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(widths=(4, 6), fc=(8,), image_size=8, num_classes=3).eval()


def toy_data(n: int = 64) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g), INFO, "toy")


def scaled(s: ConvNet, k: float) -> ConvNet:
    """The net with stage1's BN scale and shift multiplied by `k`: its stage1 features are k times the original's
    (ReLU and max-pool commute with positive scaling)."""
    t = copy.deepcopy(s)
    with torch.no_grad():
        t.stage1.bn1.weight.mul_(k)
        t.stage1.bn1.bias.mul_(k)
    return t


def noisy(s: ConvNet, sigma: float) -> ConvNet:
    t = copy.deepcopy(s)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(sigma * p.std() * torch.randn_like(p))
    return t


def test_start_gap_grows_with_the_teachers_distance():
    s, x = student(), toy_data(48).x
    gaps = [start_gap(noisy(s, sigma), s, PAIRS, x) for sigma in (0.0, 0.3, 3.0)]
    for k in range(len(PAIRS)):
        assert gaps[0][k]["one_minus_cka"] == pytest.approx(0.0, abs=1e-9)
        assert gaps[0][k]["nmse"] == 0.0
        assert gaps[0][k]["one_minus_cka"] < gaps[1][k]["one_minus_cka"] < gaps[2][k]["one_minus_cka"]
        assert gaps[0][k]["nmse"] < gaps[1][k]["nmse"] < gaps[2][k]["nmse"]


def test_scaling_a_layer_by_10_leaves_the_table_measures_unchanged_but_not_the_raw_mse():
    s, x = student(), toy_data(48).x
    t = noisy(s, 0.5)
    t10, s10 = scaled(t, 10.0), scaled(s, 10.0)  # the same pair of layers, both at ten times the scale
    before, after = start_gap(t, s, PAIRS[:1], x)[0], start_gap(t10, s10, PAIRS[:1], x)[0]
    assert after["nmse"] == pytest.approx(before["nmse"], rel=1e-4)
    assert after["one_minus_cka"] == pytest.approx(before["one_minus_cka"], abs=1e-5)
    raw = [float(FeatureMSE()(features(b, x, ["stage1"])["stage1"], features(a, x, ["stage1"])["stage1"]))
           for a, b in ((t, s), (t10, s10))]
    assert raw[1] == pytest.approx(100 * raw[0], rel=1e-3)
    assert layer_difficulty(t10, s10, PAIRS[:1], x) == pytest.approx([before["nmse"]], rel=1e-4)
    assert normalised_mse(torch.zeros(5, 3), torch.randn(5, 3)) > 0
    with pytest.raises(ValueError, match="aligned layers"):
        normalised_mse(torch.zeros(5, 3), torch.zeros(5, 4))


def test_steps_to_fraction_grow_with_the_distance_to_learn():
    # full-batch Adam (one step per epoch, no minibatch noise) moves at a roughly constant speed
    s, data = student(), toy_data(32)
    curves = [distil_alone(scaled(s, k), s, PAIRS[0], data, data.x[:16], epochs=14, lr=0.02, batch_size=32,
                           evals=14) for k in (1.5, 2.5, 4.0)]
    reached = [steps_to_fraction(c["step"], c["loss"], 0.5) for c in curves]
    assert None not in reached
    assert reached[0] < reached[1] < reached[2]
    assert curves[0]["step"][:3] == [0.0, 1.0, 2.0]  # measured before training, then after every step


def test_interpolation_by_hand_and_errors():
    assert steps_to_fraction([0, 10, 20], [10.0, 6.0, 2.0], 0.5) == pytest.approx(12.5)
    assert steps_to_fraction([0, 1], [4.0, 2.0], 0.5) == 1.0
    assert steps_to_fraction([0, 1], [4.0, 3.0], 0.5) is None
    with pytest.raises(ValueError, match="fraction must lie"):
        steps_to_fraction([0, 1], [4.0, 3.0], 1.5)


def censored_table() -> dict:
    """Three rows: stage1 reaches half its loss at step 15, stage2 never within the 40-step probe (censored),
    stage3 at step 5; `nmse` ranks them 1, 2, 3."""
    def row(name: str, nmse: float, losses: list[float]) -> dict:
        return {"teacher": name, "student": name, "nmse": nmse, "one_minus_cka": 0.1,
                "curve": {"step": [0.0, 10.0, 20.0, 30.0, 40.0], "loss": losses}}
    rows = [row("stage1", 1.0, [1.0, 0.7, 0.3, 0.2, 0.1]), row("stage2", 2.0, [1.0, 0.9, 0.8, 0.7, 0.6]),
            row("stage3", 3.0, [1.0, 0.0, 0.0, 0.0, 0.0])]
    return at_budget({"fraction": 0.5, "probe_steps": 40, "batch_size": 8, "rows": rows}, 40)


def test_a_censored_difficulty_is_reported_as_censored_and_kept_out_of_the_rule():
    table = censored_table()
    assert [(r["steps"], r["censored"]) for r in table["rows"]] == [(15.0, False), (None, True), (5.0, False)]
    assert [steps_label(r) for r in table["rows"]] == ["15", ">= 40", "5"]
    assert ">= 40" in table_text(table).splitlines()[2]
    short = at_budget(table, 10)  # a shorter probe: stage1 is now censored too, stage3 is not
    assert [steps_label(r) for r in short["rows"]] == [">= 10", ">= 10", "5"]
    with pytest.raises(ValueError, match="steps must lie in 1..40"):
        at_budget(table, 50)
    # the rule splits by nmse (1 : 2 : 3): 1 + 6/6, 1 + 12/6, 1 + 18/6 of a 9-epoch budget, whatever the probe said
    c = curriculum_from_table(table, budget=9, final=None, total_epochs=9)
    assert isinstance(c, Curriculum) and [p.epochs for p in c.phases] == [2, 3, 4]
    assert [p.epochs for p in curriculum_from_table(short, 9, None, 9).phases] == [2, 3, 4]


def test_table_rows_measure_what_they_claim():
    s, data = student(), toy_data(32)
    table = difficulty_table(scaled(s, 2.0), s, PAIRS, data, data.x[:16], epochs=2, lr=0.02, batch_size=16, evals=4)
    assert [(r["teacher"], r["student"]) for r in table["rows"]] == PAIRS
    assert table["probe_steps"] == 4
    for row, gap in zip(table["rows"], start_gap(scaled(s, 2.0), s, PAIRS, data.x[:16])):
        assert row["nmse"] == pytest.approx(gap["nmse"])
        assert row["censored"] == (row["steps"] is None)
        assert row["censored"] or 0 < row["steps"] <= 4
        assert row["curve"]["step"] == [0.0, 1.0, 2.0, 3.0, 4.0]
