"""Alignment: layer-map validation messages, matching by resolution, linear CKA properties."""
from __future__ import annotations

import pytest
import torch

from indistill_lab.alignment import (
    LayerMap, MinibatchCKA, check, cka_matrix, linear_cka, match_by_resolution, validate,
)
from indistill_lab.models import ConvNet, build_model
from indistill_lab.pruning import prune_to_widths

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(120, 12) @ torch.randn(12, 12)  # correlated columns, rank 12


def test_cka_of_x_with_itself_is_one(features) -> None:
    assert linear_cka(features, features) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(features, features, batch_size=30) == pytest.approx(1.0, abs=1e-9)


def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling(features) -> None:
    other = torch.tanh(features[:, :7]) + 0.3 * torch.randn(120, 7)
    base = linear_cka(features, other)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    assert 0.1 < base < 0.99
    assert linear_cka(features.double() @ q, other) == pytest.approx(base, rel=1e-6)
    assert linear_cka(7.5 * features, other) == pytest.approx(base, rel=1e-6)


def test_cka_not_invariant_to_general_invertible_maps(features) -> None:
    other = torch.tanh(features[:, :7]) + 0.3 * torch.randn(120, 7)
    a = torch.diag(torch.tensor([50.0] + [1.0] * 11)) @ torch.randn(12, 12)  # invertible, anisotropic
    assert torch.linalg.matrix_rank(a) == 12
    assert abs(linear_cka(features @ a, other) - linear_cka(features, other)) > 0.05
    assert linear_cka(features @ a, features) < 0.9


def test_unbiased_cka_of_independent_features_is_near_zero() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 6, generator=g), torch.randn(400, 6, generator=g)
    assert abs(linear_cka(x, y, batch_size=100)) < 0.05


def test_cka_input_errors() -> None:
    cka = MinibatchCKA()
    with pytest.raises(ValueError, match="same examples on both sides: got 5 and 6"):
        cka.update(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka.update(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="no batch seen"):
        cka.value()


def test_validate_names_the_mismatched_pair_and_the_fix() -> None:
    teacher, student = build_model("auxiliary"), build_model("student")
    lmap = LayerMap.from_pairs({p: p for p in teacher.stage_paths})
    with pytest.raises(ValueError, match=r"3 of 3 layer pairs do not align") as err:
        validate(teacher, student, lmap, SHAPE)
    msg = str(err.value)
    assert "pair 2 (teacher 'stage2' (32, 7, 7) -> student 'stage2' (16, 7, 7))" in msg
    assert "channels differ: teacher 32 vs student 16" in msg and "prune_to_widths" in msg and "connector" in msg
    pruned, _ = prune_to_widths(teacher, student)
    assert all(c.ok for c in validate(pruned, student, lmap, SHAPE))


def test_validate_spatial_and_rank_mismatch() -> None:
    model = build_model("student")
    checks = check(model, model, LayerMap.from_pairs([("stage1", "stage2"), ("stage3", "act_fc1")]), SHAPE)
    assert checks[0].problems == [
        # issue 24: pruning 8 channels "to 16" was the first fix offered; pruning only removes channels
        "channels differ: teacher 8 vs student 16, fewer on the teacher's side, so pruning cannot align them. "
        "Fix: pair 'stage2' with a teacher layer of at least 16 channels, or train a connector (1x1 conv 16 -> 8) "
        "on 'stage2'.",
        "spatial size differs: teacher 14x14 vs student 7x7. Fix: pair layers at the same resolution "
        "(match_by_resolution), or resize one side (pooling / interpolation connector).",
    ]
    assert "feature ranks differ" in checks[1].problems[0]
    with pytest.raises(KeyError, match="stage4"):
        check(model, model, LayerMap.from_pairs([("stage4", "stage1")]), SHAPE)


def test_match_by_resolution_pairs_stages_of_equal_size() -> None:
    teacher, student = build_model("teacher"), build_model("student")
    assert match_by_resolution(teacher, student, SHAPE).pairs == (
        ("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3"))
    shallow = ConvNet(widths=(8, 16), fc=(32,))  # 2 stages: 14x14 and 7x7
    assert match_by_resolution(teacher, shallow, SHAPE).pairs == (("stage1", "stage1"), ("stage2", "stage2"))
    deep_pad0 = ConvNet(widths=(8, 16, 32), fc=(32,), padding=0)  # 13, 5, 1
    with pytest.raises(ValueError, match="No stage of the teacher has the spatial size"):
        match_by_resolution(teacher, deep_pad0, SHAPE)


def test_cka_matrix_of_a_model_with_itself_has_unit_diagonal() -> None:
    torch.manual_seed(0)
    model = build_model("student").eval()
    batches = [torch.randn(16, *SHAPE) for _ in range(2)]
    m = cka_matrix(model, model, model.stage_paths, model.stage_paths + ["act_fc1"], batches)
    assert m.shape == (3, 4)
    assert torch.allclose(m.diagonal(), torch.ones(3, dtype=m.dtype), atol=1e-9)
    assert (m[:, :3] <= 1 + 1e-9).all()


def test_cka_matrix_equals_pairwise_minibatch_cka() -> None:
    """Each cell is the minibatch CKA of its two layers' taps (the self-HSICs are shared between cells)."""
    from indistill_lab.taps import features
    torch.manual_seed(1)
    teacher, student = build_model("teacher").eval(), build_model("student").eval()
    batches = [torch.randn(12, *SHAPE) for _ in range(3)]
    m = cka_matrix(teacher, student, teacher.stage_paths, student.stage_paths, batches)
    for i, tp in enumerate(teacher.stage_paths):
        for j, sp in enumerate(student.stage_paths):
            cka = MinibatchCKA()
            with torch.no_grad():
                for x in batches:
                    cka.update(features(teacher, x, [tp])[tp], features(student, x, [sp])[sp])
            assert m[i, j].item() == pytest.approx(cka.value(), rel=1e-6)  # the matrix is float32
