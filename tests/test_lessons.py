"""Every notebook is built as a lesson (README, "How a notebook is laid out"): it opens with goals,
prerequisites and a reading/run-time estimate, asks at least one predict-then-run question, ends with a
summary that points to the next notebook, and each exercise has a hint and a hidden solution that runs
(nbval runs the solution cells like any other)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


def _hidden(cell: dict[str, Any]) -> bool:
    return cell["cell_type"] == "code" and cell["metadata"].get("jupyter", {}).get("source_hidden") is True


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_notebook_opens_with_goals_prerequisites_and_time(path: Path) -> None:
    first = _source(_cells(path)[0])
    missing = [k for k in ("**Goals**", "**Prerequisites**", "**Time**") if k not in first]
    assert not missing, f"{path.name}: the first cell lacks {missing}"
    assert re.search(r"\*\*Time\*\*[^\n]*\d+\s*min[^\n]*\d+\s*s", first), \
        f"{path.name}: '**Time**' must give reading minutes and a measured quick-mode run in seconds"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_notebook_asks_to_predict_before_running(path: Path) -> None:
    cells = _cells(path)
    prompts = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "**Predict, then run.**" in _source(c)]
    assert prompts, f"{path.name}: no '**Predict, then run.**' prompt"
    for i in prompts:
        assert i + 1 < len(cells) and cells[i + 1]["cell_type"] == "code", \
            f"{path.name}: the prompt in cell {i + 1} must be followed by the code cell that answers it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_notebook_ends_with_a_summary_pointing_on(path: Path) -> None:
    cells = _cells(path)
    summaries = [_source(c) for c in cells if c["cell_type"] == "markdown" and _source(c).startswith("## Summary")]
    assert summaries, f"{path.name}: no '## Summary' cell"
    if path != NOTEBOOKS[-1]:
        following = NOTEBOOKS[NOTEBOOKS.index(path) + 1].name[:2]
        assert re.search(rf"\b{following}\b", summaries[-1]), f"{path.name}: the summary does not point to notebook {following}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_every_exercise_has_a_hint_and_a_hidden_solution(path: Path) -> None:
    cells = _cells(path)
    exercises = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _source(c).startswith("### Exercise")]
    assert exercises, f"{path.name}: no '### Exercise' cell"
    for i in exercises:
        text = _source(cells[i])
        assert "<summary>Hint</summary>" in text, f"{path.name} cell {i + 1}: exercise without a <details> hint"
        assert i + 1 < len(cells) and _hidden(cells[i + 1]) and "solution" in cells[i + 1]["metadata"].get("tags", []), \
            (f"{path.name} cell {i + 1}: the exercise must be followed by its solution, a code cell tagged 'solution' "
             "with metadata jupyter.source_hidden = true")
