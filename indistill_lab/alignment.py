"""Which teacher layer teaches which student layer, whether they fit, and how similar they are.

InDistill distils layer to layer without an encoder, which only works when each paired layer
has the same shape in teacher and student. A `LayerMap` names the pairs; `validate` checks
them on a dummy input and says exactly which pair does not fit and how to fix it;
`match_by_resolution` builds the map for same-family models; linear CKA (minibatch, unbiased
HSIC; Nguyen, Raghu & Kornblith 2021) measures how similar two layers' representations are,
and `cka_matrix` gives the full teacher x student picture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .adapter import described
from .modes import eval_mode
from .taps import Taps, get_module, stage_containers, tap


# ------------------------------------------------------------------------------------------
# Layer maps and their validation
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerMap:
    """Ordered (teacher path, student path) pairs, shallow first."""

    pairs: tuple[tuple[str, str], ...]

    @classmethod
    def from_pairs(cls, pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> "LayerMap":
        items = list(pairs.items()) if isinstance(pairs, Mapping) else [tuple(p) for p in pairs]
        if not items:
            raise ValueError("A LayerMap needs at least one (teacher path, student path) pair.")
        return cls(tuple((str(t), str(s)) for t, s in items))

    @property
    def teacher_paths(self) -> list[str]:
        return [t for t, _ in self.pairs]

    @property
    def student_paths(self) -> list[str]:
        return [s for _, s in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)


@dataclass
class PairCheck:
    """Shapes of one pair's features (without the batch dimension) and what is wrong, if anything."""

    teacher_path: str
    student_path: str
    teacher_shape: tuple[int, ...]
    student_shape: tuple[int, ...]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _output_shapes(model: nn.Module, paths: Sequence[str], input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    for p in paths:
        get_module(model, p)  # unknown paths: a KeyError that lists the valid ones
    device = next(model.parameters()).device
    with eval_mode(model):
        out = tap(model, torch.zeros(2, *input_shape, device=device), paths)
    return {p: tuple(v.shape[1:]) for p, v in out.items()}


def _describe(t_path: str, s_path: str, t: tuple[int, ...], s: tuple[int, ...]) -> list[str]:
    if t == s:
        return []
    if len(t) != len(s):
        return [f"feature ranks differ (teacher {t}, student {s}): pair a conv layer with a conv layer, "
                "an fc layer with an fc layer, or flatten both and use a connector."]
    problems = []
    if t[0] > s[0]:
        problems.append(
            f"channels differ: teacher {t[0]} vs student {s[0]}. Fix: prune the teacher to the student's "
            f"widths (pruning.prune_to_widths(teacher, student)) so {t_path!r} has {s[0]} channels, "
            f"or train a connector (1x1 conv {s[0]} -> {t[0]}) on {s_path!r}.")
    elif t[0] < s[0]:  # pruning only removes channels: it cannot widen the teacher's layer
        problems.append(
            f"channels differ: teacher {t[0]} vs student {s[0]}, fewer on the teacher's side, so pruning "
            f"cannot align them. Fix: pair {s_path!r} with a teacher layer of at least {s[0]} channels, "
            f"or train a connector (1x1 conv {s[0]} -> {t[0]}) on {s_path!r}.")
    if t[1:] != s[1:]:
        size = lambda shape: "x".join(map(str, shape[1:]))  # noqa: E731
        problems.append(
            f"spatial size differs: teacher {size(t)} vs student {size(s)}. Fix: pair layers at the same "
            "resolution (match_by_resolution), or resize one side (pooling / interpolation connector).")
    return problems


def check(teacher: nn.Module, student: nn.Module, layer_map: LayerMap, input_shape: Sequence[int]) -> list[PairCheck]:
    """Feature shapes of every pair on a dummy input of `input_shape` (C, H, W), with the problems found."""
    t_shapes = _output_shapes(teacher, layer_map.teacher_paths, input_shape)
    s_shapes = _output_shapes(student, layer_map.student_paths, input_shape)
    return [PairCheck(t, s, t_shapes[t], s_shapes[s], _describe(t, s, t_shapes[t], s_shapes[s]))
            for t, s in layer_map]


def validate(teacher: nn.Module, student: nn.Module, layer_map: LayerMap, input_shape: Sequence[int]) -> list[PairCheck]:
    """Like `check`, but raise a ValueError naming every mismatched pair and how to fix it."""
    checks = check(teacher, student, layer_map, input_shape)
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = [f"pair {checks.index(c) + 1} (teacher {c.teacher_path!r} {c.teacher_shape} -> student "
                 f"{c.student_path!r} {c.student_shape}): " + " ".join(c.problems) for c in bad]
        raise ValueError(f"{len(bad)} of {len(checks)} layer pairs do not align:\n" + "\n".join(lines))
    return checks


def _stage_paths(model: nn.Module) -> list[str]:
    """The stages of the model's description (`adapter.spec_of`), else its stage1../layer1.. children."""
    spec = described(model)
    names = list(spec.stages) if spec is not None else stage_containers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no model description (adapter.with_spec) and no "
                         "stage1../layer1.. children: build the LayerMap by hand with LayerMap.from_pairs.")
    return names


def match_by_resolution(teacher: nn.Module, student: nn.Module, input_shape: Sequence[int]) -> LayerMap:
    """Pair the stage outputs of two same-family models that have the same spatial resolution.

    Stages come from the model's description (`adapter.spec_of`) or `stage1..`/`layer1..` children
    (torchvision ResNets). When several stages share a resolution the deepest is used.
    Channel widths may differ: `validate` then tells you to prune.
    """
    def by_resolution(model: nn.Module) -> dict[tuple[int, ...], str]:
        shapes = _output_shapes(model, _stage_paths(model), input_shape)
        return {shape[1:]: path for path, shape in shapes.items()}  # later (deeper) stages win

    t_res, s_res = by_resolution(teacher), by_resolution(student)
    pairs = [(t_res[r], s_res[r]) for r in t_res if r in s_res]
    if not pairs:
        raise ValueError(f"No stage of the teacher has the spatial size of a student stage (teacher "
                         f"{sorted(t_res)}, student {sorted(s_res)}): pair layers by hand with a connector.")
    return LayerMap.from_pairs(pairs)


# ------------------------------------------------------------------------------------------
# Linear CKA, minibatch form with the unbiased HSIC estimator
# ------------------------------------------------------------------------------------------
def _unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) of two n x n Gram matrices, n > 3."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
    trace = (k * l).sum()
    middle = (ones.T @ k @ ones) * (ones.T @ l @ ones) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (ones.T @ k @ l @ ones)
    return ((trace + middle - last) / (n * (n - 3))).squeeze()


def _gram(z: torch.Tensor, side: str) -> tuple[torch.Tensor, bool]:
    """The linear Gram matrix of a batch of features (flattened, float64) and whether its rows differ
    (at least 4 rows: the unbiased HSIC estimator needs them).

    A batch whose rows are all equal carries no similarity structure: its HSIC is exactly 0 (rounding
    would leave ~1e-9 and a meaningless CKA), so callers skip it.
    """
    if z.shape[0] < 4:
        raise ValueError(f"Unbiased HSIC needs at least 4 examples per batch, got {z.shape[0]}.")
    z = z.detach().flatten(1).double()
    if not torch.isfinite(z).all():
        raise ValueError(f"CKA: the {side} representation contains NaN or infinite values (a diverged "
                         "model?); CKA needs finite features.")
    return z @ z.T, bool((z != z[0]).any())


class MinibatchCKA:
    """Linear CKA accumulated over minibatches: sum HSIC(K, L) / sqrt(sum HSIC(K, K) * sum HSIC(L, L)).

    Each batch contributes unbiased HSIC estimates of its linear Gram matrices, so the value
    does not depend on the batch size the way the biased estimator does.

        >>> cka = MinibatchCKA()
        >>> x = torch.randn(32, 10)
        >>> cka.update(x, 2 * x); round(cka.value(), 6)
        1.0
    """

    def __init__(self) -> None:
        self.kl = self.kk = self.ll = 0.0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch of paired features (rows = the same examples); any trailing shape is flattened."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs the same examples on both sides: got {x.shape[0]} and {y.shape[0]} rows.")
        k, x_varies = _gram(x, "first")
        l, y_varies = _gram(y, "second")
        self.add(k, l, x_varies, y_varies)

    def add(self, k: torch.Tensor, l: torch.Tensor, x_varies: bool = True, y_varies: bool = True,
            kk: float | None = None, ll: float | None = None) -> None:
        """Add one batch given its Gram matrices (from `_gram`); `kk`/`ll` pass self-HSICs already computed
        (`cka_matrix` computes each layer's once per batch, not once per pair)."""
        if x_varies and y_varies:
            self.kl += float(_unbiased_hsic(k, l))
        if x_varies:
            self.kk += float(_unbiased_hsic(k, k)) if kk is None else kk
        if y_varies:
            self.ll += float(_unbiased_hsic(l, l)) if ll is None else ll

    def value(self) -> float:
        if self.kk <= 0 or self.ll <= 0:
            raise ValueError("CKA is undefined: no batch seen, or a representation is constant.")
        return self.kl / (self.kk * self.ll) ** 0.5


def linear_cka(x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Linear CKA of two feature sets (rows = the same examples), in minibatches of `batch_size` (all by default).

        >>> x = torch.randn(50, 8)
        >>> q, _ = torch.linalg.qr(torch.randn(8, 8))
        >>> round(linear_cka(x, x @ q), 6)
        1.0
    """
    step = batch_size or len(x)
    if step < 4:
        raise ValueError(f"batch_size must be >= 4 for the unbiased estimator, got {step}.")
    cka = MinibatchCKA()
    for i in range(0, len(x), step):
        if len(x) - i >= 4:  # a last chunk of fewer than 4 rows cannot be estimated; it is dropped
            cka.update(x[i:i + step], y[i:i + step])
    return cka.value()


@torch.no_grad()
def cka_matrix(
    teacher: nn.Module,
    student: nn.Module,
    teacher_paths: Sequence[str],
    student_paths: Sequence[str],
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    max_batches: int | None = None,
) -> torch.Tensor:
    """CKA between every teacher layer (rows) and every student layer (columns), from taps.

    Both models run in eval mode on the same batches; `batches` yields inputs or (x, y) tuples.
    """
    cells = [[MinibatchCKA() for _ in student_paths] for _ in teacher_paths]
    device_t = next(teacher.parameters()).device
    device_s = next(student.parameters()).device
    with eval_mode(teacher), eval_mode(student):
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            with Taps(teacher, teacher_paths, detach=True) as tt:
                teacher(x.to(device_t))
            with Taps(student, student_paths, detach=True) as st:
                student(x.to(device_s))
            rows = [_gram(tt[p].cpu(), "teacher") for p in teacher_paths]
            cols = [_gram(st[p].cpu(), "student") for p in student_paths]
            row_self = [float(_unbiased_hsic(k, k)) if varies else 0.0 for k, varies in rows]
            col_self = [float(_unbiased_hsic(l, l)) if varies else 0.0 for l, varies in cols]
            for i, (k, k_varies) in enumerate(rows):
                for j, (l, l_varies) in enumerate(cols):
                    cells[i][j].add(k, l, k_varies, l_varies, row_self[i], col_self[j])
    return torch.tensor([[c.value() for c in row] for row in cells])
