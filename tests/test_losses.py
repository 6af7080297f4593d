"""Each loss against values computed by hand on tiny tensors, plus invariances and shape errors."""
import math

import pytest
import torch
from torch.nn import functional as F

from indistill_lab.losses import (LOSSES, DRGLoss, DSRLoss, FeatureMSE, FitNetsHint, KDLoss, PKTLoss,
                                  make_loss)


def test_kd_matches_hand_computed_kl_with_t_squared_scaling():
    # teacher probabilities (1/2, 1/2); student logits / T = (ln 3, 0) -> (3/4, 1/4)
    # KL = 1/2 ln(1/2 / 3/4) + 1/2 ln(1/2 / 1/4) = 1/2 ln(4/3); times T^2 = 4
    student = torch.tensor([[2 * math.log(3.0), 0.0]])
    teacher = torch.zeros(1, 2)
    assert KDLoss(temperature=2.0)(student, teacher).item() == pytest.approx(2 * math.log(4 / 3), rel=1e-5)


def test_kd_averages_over_batch_and_is_zero_for_equal_logits():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    assert KDLoss(4.0)(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    one = KDLoss(1.0)(logits[:1], torch.zeros(1, 3)).item()
    two = KDLoss(1.0)(torch.cat([logits[:1], logits[:1]]), torch.zeros(2, 3)).item()
    assert two == pytest.approx(one, rel=1e-6)


def test_kd_teacher_gets_no_gradient():
    s, t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    KDLoss()(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_pkt_matches_hand_computed_value():
    # teacher rows identical: both kernels give p = 1/2 everywhere.
    # student rows orthogonal: cosine kernel rows (2/3, 1/3) -> divergence ln(2)/12;
    # Student-t kernel off-diagonal 1/(1 + sqrt 2) -> rows (a, 1 - a) with a = 1/sqrt 2.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a = 1 / math.sqrt(2)
    t_part = ((0.5 - a) * (math.log(0.5) - math.log(a)) + (a - 0.5) * (math.log(0.5) - math.log(1 - a))) / 2
    expected = math.log(2) / 12 + t_part
    assert PKTLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_pkt_is_zero_at_identical_inputs_and_invariant_to_feature_permutation():
    torch.manual_seed(0)
    s, t = torch.randn(12, 6), torch.randn(12, 9)
    assert PKTLoss()(t, t).item() == pytest.approx(0.0, abs=1e-7)
    base = PKTLoss()(s, t).item()
    assert base > 1e-3
    assert PKTLoss()(s[:, torch.randperm(6)], t[:, torch.randperm(9)]).item() == pytest.approx(base, rel=1e-5)


def test_pkt_accepts_feature_maps_and_has_finite_gradients_with_duplicate_samples():
    x = torch.randn(3, 2, 4, 4)
    s = torch.cat([x, x]).requires_grad_()
    PKTLoss()(s, torch.randn(6, 7)).backward()
    assert torch.isfinite(s.grad).all()


def test_pkt_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        PKTLoss()(torch.randn(1, 3), torch.randn(1, 3))


def test_feature_mse_hand_value_and_width_error_suggests_pruning():
    assert FeatureMSE()(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match=r"widths differ \(student 8, teacher 16\).*prune the teacher"):
        FeatureMSE()(torch.randn(2, 8, 7, 7), torch.randn(2, 16, 7, 7))
    with pytest.raises(ValueError, match="spatial sizes differ"):
        FeatureMSE()(torch.randn(2, 8, 7, 7), torch.randn(2, 8, 14, 14))
    with pytest.raises(ValueError, match="batch sizes differ"):
        FeatureMSE()(torch.randn(2, 8), torch.randn(3, 8))


def test_fitnets_connector_is_learned_and_gives_hand_value():
    loss = FitNetsHint.for_features(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))
    assert sum(p.numel() for p in loss.parameters()) == 2 * 3 + 3  # 1x1 weights + bias
    with torch.no_grad():
        loss.connector.weight.fill_(1.0)
        loss.connector.bias.zero_()
    student = torch.ones(1, 2, 3, 3)  # connector output: 2 everywhere
    assert loss(student, torch.zeros(1, 3, 3, 3)).item() == pytest.approx(4.0)
    vectors = FitNetsHint(2, 3)
    with torch.no_grad():
        vectors.connector.weight.fill_(1.0)
        vectors.connector.bias.fill_(1.0)
    assert vectors(torch.ones(4, 2), torch.full((4, 3), 3.0)).item() == pytest.approx(0.0)


def test_fitnets_shape_errors():
    loss = FitNetsHint(2, 3)
    with pytest.raises(ValueError, match="connector maps 2 -> 3"):
        loss(torch.randn(2, 4, 3, 3), torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="spatial sizes differ"):
        loss(torch.randn(2, 2, 3, 3), torch.randn(2, 3, 6, 6))


def test_drg_is_alpha_times_kd_and_dsr_matches_sorted_logits():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert DRGLoss(alpha=0.2, temperature=4.0)(s, t).item() == pytest.approx(0.2 * KDLoss(4.0)(s, t).item(), rel=1e-6)
    # same values in a different class order: the ranked shapes agree, so DSR is zero
    assert DSRLoss()(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]])).item() == pytest.approx(0.0, abs=1e-7)
    # hand value: sorted (0, ln 3) vs previous (0, 0), T = 1, beta = 2 -> 2 * 1/2 ln(4/3)
    value = DSRLoss(beta=2.0, temperature=1.0)(torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)).item()
    assert value == pytest.approx(math.log(4 / 3), rel=1e-5)
    with pytest.raises(ValueError, match="slice both to the smaller batch"):
        DSRLoss()(torch.randn(4, 3), torch.randn(3, 3))


def test_make_loss_by_name_and_errors():
    assert set(LOSSES) == {"kd", "pkt", "mse", "fitnets", "ce"}
    assert isinstance(make_loss("kd", temperature=2.0), KDLoss)
    fit = make_loss("fitnets", torch.zeros(2, 8, 5, 5), torch.zeros(2, 16, 5, 5))
    assert fit.connector.in_channels == 8 and fit.connector.out_channels == 16
    with pytest.raises(KeyError, match="Known losses: kd, pkt, mse, fitnets, ce"):
        make_loss("l2")
    with pytest.raises(ValueError, match="connector can be sized"):
        make_loss("fitnets")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KDLoss(0.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        FeatureMSE()(torch.randn(3), torch.randn(3))


def test_register_loss_makes_a_new_loss_usable_by_name(monkeypatch):
    from indistill_lab import losses

    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))  # registrations of this test stay here

    @losses.register_loss
    class Cosine(losses.DistillLoss):
        name = "cosine"

        def forward(self, student, teacher):
            return 1 - torch.nn.functional.cosine_similarity(student.flatten(1), teacher.flatten(1)).mean()

    x = torch.randn(4, 6)
    assert isinstance(losses.make_loss("cosine"), Cosine)
    assert losses.make_loss("cosine")(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)

    class Unnamed(losses.DistillLoss):
        pass

    with pytest.raises(ValueError, match="Unnamed needs its own `name`"):
        losses.register_loss(Unnamed)
    with pytest.raises(ValueError, match="Two losses are named 'kd'"):
        losses.register_loss(type("MyKD", (losses.DistillLoss,), {"name": "kd"}))
    with pytest.raises(TypeError, match="DistillLoss subclass"):
        losses.register_loss(torch.nn.MSELoss)


def test_ce_term_is_cross_entropy_against_labels():
    from indistill_lab.losses import CrossEntropy

    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert make_loss("ce")(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert CrossEntropy(0.1)(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item())
    with pytest.raises(ValueError, match=r"integer labels \(N,\).*teacher layer 'labels'"):
        CrossEntropy()(logits, logits)
