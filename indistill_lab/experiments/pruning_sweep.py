"""Pruning sweeps: prune a trained model at several ratios and criteria, measure it before and after a
short fine-tune. Precomputed by notebook 02 (cached) and browsed there with `viz.pruning.SweepExplorer`."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..criteria import make_criterion
from ..data import Loader, Split
from ..metrics import accuracy, evaluate_retrieval
from ..pruning import prune_to_widths, widths_for_ratio
from ..train import Trainer


def evaluate_pruning(
    model: nn.Module,
    ratio: float | Sequence[float],
    criterion: str,
    train: Split,
    queries: Split,
    database: Split,
    finetune_epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Prune a ConvNet by `ratio` (one, or one per stage) with a named criterion and measure it.

    Returns JSON-ready numbers: accuracy on `queries` and retrieval mAP (11-point, Euclidean;
    queries against `database`) right after pruning and after `finetune_epochs` of
    cross-entropy on `train` (Adam, `lr`), plus widths, params, MACs and the kept channels of
    each stage's convs.
    """
    def measure(m: nn.Module) -> tuple[float, float]:
        acc = accuracy(m, Loader(queries, 1000, shuffle=False), "cpu")
        ret = evaluate_retrieval(m, queries, database, device="cpu")["euclidean"]["map_11pt"]
        return round(acc, 4), round(ret, 4)

    widths = widths_for_ratio(model, ratio)
    pruned, report = prune_to_widths(model, widths, make_criterion(criterion, train, seed))
    acc, ret = measure(pruned)
    acc_ft = ret_ft = None
    if finetune_epochs > 0:
        Trainer(pruned, lr=lr, device="cpu", progress=False, seed=seed).fit(
            Loader(train, 128, shuffle=True, seed=seed), finetune_epochs)
        acc_ft, ret_ft = measure(pruned.eval())
    convs = {p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return {"criterion": criterion, "ratio": ratio, "widths": widths, "acc": acc, "map": ret,
            "acc_ft": acc_ft, "map_ft": ret_ft, "params": report.params_after, "macs": report.flops_after,
            "kept": {p: k for p, k in report.kept.items() if p in convs}}


def stage_ratios(mode: str, ratio: float, stages: int) -> float | list[float]:
    """The pruning ratios of one sweep setting: `ratio` on every stage (`mode` "all") or on one ("stage2")."""
    if mode == "all":
        return ratio
    names = [f"stage{i + 1}" for i in range(stages)]
    if mode not in names:
        raise ValueError(f"Unknown mode {mode!r}: use 'all' or one of {', '.join(names)}.")
    return [ratio if name == mode else 0.0 for name in names]


def evaluate_setting(model: nn.Module, criterion: str, mode: str, ratio: float, train: Split, queries: Split,
                     database: Split, finetune_epochs: int = 1, seed: int = 0) -> dict[str, Any]:
    """One sweep cell measured afresh (a notebook's "fresh run" button): one-stage settings are not fine-tuned."""
    ratios = stage_ratios(mode, ratio, len(model.widths))
    return evaluate_pruning(model, ratios, criterion, train, queries, database,
                            finetune_epochs if mode == "all" else 0, seed=seed)


def pruning_sweep(
    model: nn.Module,
    criteria_names: Sequence[str],
    ratios: Sequence[float],
    train: Split,
    queries: Split,
    database: Split,
    finetune_epochs: int = 1,
    per_stage_finetune: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`evaluate_pruning` over a grid, for a notebook to browse: every criterion x every ratio
    `r`, applied to all stages at once (`mode` "all") and to one stage at a time (`mode`
    "stage1", ...; fine-tuned only if `per_stage_finetune`, to keep the sweep cheap)."""
    modes = ["all"] + [f"stage{s + 1}" for s in range(len(model.widths))]
    return [{"mode": mode, "r": r, **evaluate_pruning(
                model, stage_ratios(mode, r, len(model.widths)), name, train, queries, database,
                finetune_epochs if mode == "all" or per_stage_finetune else 0, seed=seed)}
            for name in criteria_names for r in ratios for mode in modes]
