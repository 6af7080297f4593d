"""Tables the notebooks and README show: architectures side by side, the zoo's baselines."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .metrics import count_flops, count_parameters


def architecture_rows(models: dict[str, nn.Module], input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per model: stage widths, hidden sizes, parameters and MACs for one input."""
    return [{"model": name, "stage widths": getattr(m, "widths", "-"), "fc": getattr(m, "fc_sizes", "-"),
             "parameters": count_parameters(m), "MACs": count_flops(m, input_shape)}
            for name, m in models.items()]


def zoo_rows(manifest: dict[str, Any], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The zoo's measured results (percent), in the InDistill tables' columns, for `names` (default all)."""
    keys = [("test acc", "test_accuracy"), ("mAP (e)", "map_e"), ("mAP (c)", "map_c"),
            ("top-100 (e)", "top100_e"), ("top-100 (c)", "top100_c"), ("epochs", "epochs")]
    models = manifest["models"]
    return [{"model": name, **{label: models[name].get(key, "n/a") for label, key in keys}}
            for name in (names if names is not None else list(models))]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured markdown table from rows of equal keys (numbers with thousands separators)."""
    if not rows:
        raise ValueError("markdown_table() needs at least one row.")
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.2f}"
        if isinstance(v, (list, tuple)):
            return "/".join(map(str, v))
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
