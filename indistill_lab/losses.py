"""Distillation losses with one contract: `loss(student, teacher) -> scalar tensor`.

Every loss is an `nn.Module` called with the student's tensor first and the teacher's
(the target) second; the target never receives gradients. Shapes are checked up front and
a mismatch raises a `ValueError` that says what to change.

    >>> import torch
    >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
    >>> float(KDLoss(temperature=4.0)(s, t)) >= 0
    True

| name      | inputs                          | what it matches                                   |
|-----------|---------------------------------|---------------------------------------------------|
| `kd`      | logits (N, classes)             | softened class probabilities (Hinton et al.)      |
| `pkt`     | any features (N, ...)           | the batch's similarity structure (Passalis, Tefas)|
| `mse`     | equal-shaped features           | the features themselves, no encoder (InDistill)   |
| `fitnets` | features, any channel counts    | teacher features through a learned 1x1 connector  |
| `ce`      | logits (N, classes), labels (N,)| the true labels (cross-entropy; teacher layer 'labels') |

A new loss is a `DistillLoss` subclass with a `name`, registered with `@register_loss`; a curriculum
term then names it like the built-in ones.

The self-distillation terms of the multi-source self-KD paper (docs/methods.md, section 3),
`DRGLoss` and `DSRLoss`, follow the same contract with their own "teacher" tensors.
`make_loss(name, student_example, teacher_example)` builds a loss by name, sized for the
given features (the FitNets connector needs the channel counts).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _check_pair(name: str, student: torch.Tensor, teacher: torch.Tensor, min_dim: int = 2) -> None:
    """Both inputs are tensors with a batch dimension of the same size."""
    for role, t in (("student", student), ("teacher", teacher)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: the {role} input must be a tensor, got {type(t).__name__}.")
        if t.dim() < min_dim:
            raise ValueError(f"{name}: the {role} input has shape {tuple(t.shape)}; expected at least "
                             f"{min_dim} dimensions with the batch first (N, ...).")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: batch sizes differ (student {student.shape[0]}, teacher {teacher.shape[0]}); "
                         "compute both on the same batch of inputs.")


class DistillLoss(nn.Module):
    """Base class: `forward(student, teacher)` returns a scalar; `for_features` builds one sized for the data."""

    name = "loss"

    @classmethod
    def for_features(cls, student: torch.Tensor, teacher: torch.Tensor, **params: Any) -> "DistillLoss":
        """A loss ready for features shaped like `student` and `teacher` (only FitNets needs the shapes)."""
        return cls(**params)


LOSSES: dict[str, type[DistillLoss]] = {}
"""Every loss a curriculum term can name, by `name` (filled by `register_loss`)."""


def register_loss(cls: type[DistillLoss]) -> type[DistillLoss]:
    """Class decorator: make a `DistillLoss` subclass available to curricula under `cls.name`.

        @register_loss
        class CosineLoss(DistillLoss):
            name = "cosine"
            def forward(self, student, teacher):
                return 1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1).detach()).mean()
    """
    if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
        raise TypeError(f"register_loss takes a DistillLoss subclass (forward(student, teacher) -> scalar), not {cls!r}.")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs its own `name` (the string curriculum terms use) to be registered.")
    if name in LOSSES and LOSSES[name] is not cls:
        raise ValueError(f"Two losses are named {name!r}: {LOSSES[name].__name__} and {cls.__name__}; rename one.")
    LOSSES[name] = cls
    return cls


@register_loss
class KDLoss(DistillLoss):
    """Hinton KD: T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.

    The T^2 factor keeps the gradient scale independent of the temperature.

    >>> s = torch.tensor([[2 * torch.log(torch.tensor(3.0)), 0.0]]); t = torch.zeros(1, 2)
    >>> round(float(KDLoss(temperature=2.0)(s, t)), 4)   # 4 * 0.5 * ln(4/3)
    0.5754
    """

    name = "kd"

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"{self.name}: temperature must be > 0 (T divides the logits), got {temperature}.")
        self.temperature = float(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, student, teacher)
        if student.dim() != 2 or student.shape != teacher.shape:
            raise ValueError(f"{self.name}: expects logits of equal shape (N, classes); got student "
                             f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}. Use the models' "
                             "outputs (layer 'output'), and the same number of classes in both.")
        T = self.temperature
        log_q = F.log_softmax(student / T, dim=1)
        log_p = F.log_softmax(teacher.detach() / T, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * T * T


def _row_normalise(kernel: torch.Tensor) -> torch.Tensor:
    return kernel / kernel.sum(dim=1, keepdim=True)


def _cosine_kernel(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(cos(x_i, x_j) + 1) / 2 for all pairs of rows."""
    x = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
    return (x @ x.T + 1.0) / 2.0


def _student_t_kernel(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / (1 + ||x_i - x_j||) for all pairs of rows, with a gradient that stays finite at distance 0."""
    sq_norms = (x * x).sum(dim=1)
    sq = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    dist = torch.where(eye, torch.zeros_like(sq), sq.clamp_min(eps).sqrt())
    return 1.0 / (1.0 + dist)


@register_loss
class PKTLoss(DistillLoss):
    """Probabilistic knowledge transfer, combined form (docs/methods.md, section 1).

    Each batch is turned into two kernel matrices (cosine and Student-t), each row-normalised
    into conditional probabilities; the loss is the sum over both kernels of the mean over
    (i, j) of the symmetric divergence (p - q)(log p - log q). It compares similarity
    structure, so teacher and student widths may differ; it is zero when the features are
    identical and unchanged by any permutation of the feature dimensions. Non-finite teacher
    features raise ValueError; non-finite student features give a non-finite loss, which the
    Trainer turns into a clean stop.
    """

    name = "pkt"

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def _divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return ((p - q) * (torch.log(p + self.eps) - torch.log(q + self.eps))).mean()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, student, teacher)
        if student.shape[0] < 2:
            raise ValueError(f"{self.name}: needs a batch of at least 2 samples to compare, got {student.shape[0]}.")
        s, t = student.flatten(1), teacher.detach().flatten(1)
        if not torch.isfinite(t).all():
            raise ValueError(f"{self.name}: the teacher features contain NaN or infinite values; check the teacher "
                             "(a diverged or corrupt checkpoint?).")
        floor = self.eps * self.eps  # keeps sqrt differentiable for duplicate samples (distance 0)
        total = student.new_zeros(())
        for kernel in (lambda z: _cosine_kernel(z, self.eps), lambda z: _student_t_kernel(z, floor)):
            total = total + self._divergence(_row_normalise(kernel(t)), _row_normalise(kernel(s)))
        return total


def _width_advice(student: torch.Tensor, teacher: torch.Tensor) -> str:
    if student.dim() >= 2 and teacher.dim() >= 2 and student.shape[1] != teacher.shape[1]:
        return (f"the widths differ (student {student.shape[1]}, teacher {teacher.shape[1]}): prune the teacher "
                "to the student's widths (indistill_lab.pruning.prune_to_widths) so the layers align, or use "
                "'fitnets', which learns a connector, or 'pkt', which compares similarity structure.")
    return ("the spatial sizes differ: pair layers at the same resolution (e.g. the same stage of both "
            "networks), or use 'pkt', which compares similarity structure.")


@register_loss
class FeatureMSE(DistillLoss):
    """Direct feature matching, InDistill's intermediate loss: mean squared error between the
    teacher's and the student's (flattened) features of the same shape, with no encoder.

    >>> float(FeatureMSE()(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)))
    2.5
    """

    name = "mse"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, student, teacher)
        if student.shape != teacher.shape:
            raise ValueError(f"{self.name}: student features {tuple(student.shape)} and teacher features "
                             f"{tuple(teacher.shape)} differ in shape; {_width_advice(student, teacher)}")
        return F.mse_loss(student, teacher.detach())


@register_loss
class FitNetsHint(DistillLoss):
    """FitNets hint: a learned 1x1-conv connector maps the student's features to the teacher's width,
    then MSE. The baseline InDistill argues against: the connector is extra trainable state
    (`parameters()`), and the student can meet the teacher through it without aligning its own
    features. Accepts feature maps (N, C, H, W) or vectors (N, C).
    """

    name = "fitnets"

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        if student_channels <= 0 or teacher_channels <= 0:
            raise ValueError(f"fitnets: channel counts must be positive, got student {student_channels}, "
                             f"teacher {teacher_channels}.")
        self.connector = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    @classmethod
    def for_features(cls, student: torch.Tensor, teacher: torch.Tensor, **params: Any) -> "FitNetsHint":
        _check_pair(cls.name, student, teacher)
        return cls(student.shape[1], teacher.shape[1], **params)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, student, teacher)
        if student.dim() not in (2, 4) or student.dim() != teacher.dim():
            raise ValueError(f"{self.name}: expects feature maps (N, C, H, W) or vectors (N, C) of the same rank; "
                             f"got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}.")
        if student.shape[1] != self.connector.in_channels or teacher.shape[1] != self.connector.out_channels:
            raise ValueError(f"{self.name}: the connector maps {self.connector.in_channels} -> "
                             f"{self.connector.out_channels} channels but got student {student.shape[1]} and "
                             f"teacher {teacher.shape[1]}; build it with FitNetsHint.for_features(student, teacher).")
        if student.shape[2:] != teacher.shape[2:]:
            raise ValueError(f"{self.name}: spatial sizes differ (student {tuple(student.shape[2:])}, teacher "
                             f"{tuple(teacher.shape[2:])}); pair layers at the same resolution.")
        vectors = student.dim() == 2
        s = student[:, :, None, None] if vectors else student
        mapped = self.connector(s)
        return F.mse_loss(mapped.flatten(1) if vectors else mapped, teacher.detach())


class DRGLoss(KDLoss):
    """Distillation with reverse guidance (self-KD, docs/methods.md section 3): the shallow auxiliary head's
    logits (the "teacher", detached) teach the final logits (the student):
    alpha * T^2 * KL(softmax(z_aux / T) || softmax(z / T)); alpha = 0.2, T = 4 in the paper.
    """

    name = "drg"

    def __init__(self, alpha: float = 0.2, temperature: float = 4.0) -> None:
        super().__init__(temperature)
        if alpha < 0:
            raise ValueError(f"{self.name}: alpha must be >= 0 (the weight of the term), got {alpha}.")
        self.alpha = float(alpha)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.alpha * super().forward(student, teacher)


class DSRLoss(KDLoss):
    """Distillation with shape-wise regularisation (self-KD, docs/methods.md section 3): each sample's logits
    are sorted (values only, ascending) and the softmax of the current batch's sorted logits is
    matched to the previous batch's (the "teacher", detached):
    beta * T^2 * KL(softmax(sort(z_prev) / T) || softmax(sort(z) / T)); beta = 1, T = 4.
    The caller keeps the previous batch and skips the first batch of an epoch; batches must
    have the same size (slice both to the smaller one at the end of an epoch).
    """

    name = "dsr"

    def __init__(self, beta: float = 1.0, temperature: float = 4.0) -> None:
        super().__init__(temperature)
        if beta < 0:
            raise ValueError(f"{self.name}: beta must be >= 0 (the weight of the term), got {beta}.")
        self.beta = float(beta)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"{self.name}: current logits {tuple(student.shape)} and previous-batch logits "
                             f"{tuple(teacher.shape)} differ in shape; slice both to the smaller batch.")
        return self.beta * super().forward(student.sort(dim=1).values, teacher.sort(dim=1).values)


@register_loss
class CrossEntropy(DistillLoss):
    """Cross-entropy of the student's logits against the true labels: a term like the others, so that e.g.
    "alpha CE + (1 - alpha) KD" is a curriculum. The "teacher" side is the batch's labels (teacher layer
    'labels', `curriculum.LABELS`).

    >>> round(float(CrossEntropy()(torch.zeros(2, 4), torch.tensor([0, 3]))), 4)   # ln 4
    1.3863
    """

    name = "ce"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.dim() != 2 or teacher.dim() != 1 or teacher.is_floating_point() or len(teacher) != len(student):
            raise ValueError(f"{self.name}: expects logits (N, classes) and integer labels (N,); got "
                             f"{tuple(student.shape)} and {tuple(teacher.shape)} {teacher.dtype}. Use student layer "
                             "'output' and teacher layer 'labels'.")
        return F.cross_entropy(student, teacher, label_smoothing=self.label_smoothing)


def make_loss(name: str, student: torch.Tensor | None = None, teacher: torch.Tensor | None = None,
              **params: Any) -> DistillLoss:
    """Build the registered loss called `name` ('kd', 'pkt', 'mse', 'fitnets', 'ce', ...); example features
    size a connector."""
    if name not in LOSSES:
        raise KeyError(f"Unknown loss {name!r}. Known losses: {', '.join(LOSSES)}.")
    cls = LOSSES[name]
    if student is None or teacher is None:
        if cls is FitNetsHint and not params:
            raise ValueError("fitnets: pass example student and teacher features (or the channel counts) "
                             "so the connector can be sized.")
        return cls(**params)
    return cls.for_features(student, teacher, **params)
