"""indistill_lab: pruning, layer-alignment, curriculum and distillation primitives for the course notebooks.

The public API in one place, imported on first use (so `import indistill_lab` stays cheap, without torch):

    from indistill_lab import ModelSpec, propose_spec, with_spec, Trainer, Curriculum, Term, evaluate_student

Each name lives in the module listed in `_EXPORTS`; `help(indistill_lab.<module>)` explains the module.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    # your model: its description by module paths
    "ModelSpec": ("adapter", "ModelSpec"), "spec_of": ("adapter", "spec_of"),
    "propose_spec": ("adapter", "propose_spec"), "with_spec": ("adapter", "with_spec"),
    "SpecError": ("adapter", "SpecError"),
    # data
    "Split": ("data", "Split"), "Loader": ("data", "Loader"), "load_split": ("data", "load_split"),
    "dataset_info": ("data", "dataset_info"), "split_from_tensors": ("data", "split_from_tensors"),
    "split_from_dataset": ("data", "split_from_dataset"), "splits_from_folder": ("data", "splits_from_folder"),
    # models, features, pruning, alignment
    "build_model": ("models", "build_model"), "ConvNet": ("models", "ConvNet"),
    "Taps": ("taps", "Taps"), "features": ("taps", "features"), "OUTPUT": ("taps", "OUTPUT"),
    "prune_to_widths": ("pruning", "prune_to_widths"), "make_criterion": ("criteria", "make_criterion"),
    "LayerMap": ("alignment", "LayerMap"), "match_by_resolution": ("alignment", "match_by_resolution"),
    "validate": ("alignment", "validate"), "linear_cka": ("alignment", "linear_cka"),
    # distillation: losses, curricula, objectives, the loop
    "DistillLoss": ("losses", "DistillLoss"), "register_loss": ("losses", "register_loss"),
    "make_loss": ("losses", "make_loss"),
    "Curriculum": ("curriculum", "Curriculum"), "Term": ("curriculum", "Term"), "Phase": ("curriculum", "Phase"),
    "LABELS": ("curriculum", "LABELS"), "stage_pairs": ("curriculum", "stage_pairs"),
    "embedding_term": ("curriculum", "embedding_term"),
    "CurriculumObjective": ("objective", "CurriculumObjective"), "Sources": ("sources", "Sources"),
    "KeptChannels": ("sources", "KeptChannels"),
    "Trainer": ("train", "Trainer"), "Callback": ("train", "Callback"), "History": ("train", "History"),
    "TensorBoard": ("tracking", "TensorBoard"),
    # measuring
    "accuracy": ("metrics", "accuracy"), "embeddings": ("metrics", "embeddings"),
    "retrieval_metrics": ("metrics", "retrieval_metrics"), "evaluate_retrieval": ("metrics", "evaluate_retrieval"),
    "count_parameters": ("metrics", "count_parameters"), "count_flops": ("metrics", "count_flops"),
    "evaluate_student": ("evaluation", "evaluate_student"),
    # runs and methods
    "RunConfig": ("pipeline", "RunConfig"), "prepare": ("pipeline", "prepare"),
    "prepare_models": ("pipeline", "prepare_models"),
    "Context": ("methods", "Context"), "Method": ("methods", "Method"), "get_method": ("methods", "get_method"),
    "method_names": ("methods", "method_names"), "register_method": ("methods", "register"),
    "compare_methods": ("experiments.compare", "compare_methods"),
    # an explorer of your models' retrieval (needs the `lab` extra: ipywidgets, plotly)
    "RetrievalExplorer": ("viz.retrieval", "RetrievalExplorer"),
    # where files go, and the quick mode of tests and CI
    "results_dir": ("results", "results_dir"), "quick_mode": ("config", "quick_mode"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first access (PEP 562) and cache the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'indistill_lab' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
