"""The stored notebooks read without a kernel: no raw widget repr, no widget view without its state, no error,
no empty figure, and small enough to browse (`make notebooks` stores them)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
RAW_REPRS = ("VBox(", "HBox(", "FigureWidget(", "<bound method", "Error displaying widget")
MAX_BYTES = 4_000_000
DATA_KEYS = ("x", "y", "z", "values", "node", "link", "lat", "r")


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _has_data(trace: dict[str, Any]) -> bool:
    return any(trace.get(key) not in (None, [], {}, "") for key in DATA_KEYS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_stored_outputs_are_readable_without_a_kernel(path: Path) -> None:
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB: store it compactly"
    nb = json.loads(path.read_text())
    state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    problems = []
    for number, cell in enumerate(nb["cells"], start=1):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                problems.append(f"cell {number}: stored error {output['ename']}")
            texts = [_text(output.get("text", ""))] + [_text(v) for k, v in output.get("data", {}).items()
                                                       if k.startswith("text/")]
            problems += [f"cell {number}: raw repr {raw!r}" for raw in RAW_REPRS if any(raw in t for t in texts)]
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view and view["model_id"] not in state:
                problems.append(f"cell {number}: widget view without stored state (shows 'model not found')")
            figure = output.get("data", {}).get("application/vnd.plotly.v1+json")
            if figure is not None and not any(_has_data(t) for t in figure.get("data", [])):
                problems.append(f"cell {number}: empty figure {figure.get('layout', {}).get('title')}")
    assert not problems, f"{path.name}: {problems}"
