"""Every notebook is built as a lesson (README, "How a notebook is laid out"): it opens with goals,
prerequisites and a reading/run-time estimate, asks at least one predict-then-run question, ends with a
summary that points to the next notebook, and each exercise has a hint and a solution hidden until the learner
opens it: a markdown cell holding the code in a closed <details> block, which Run All never runs or shows
(`python -m indistill_lab.viz.store --no-run` turns a code cell tagged 'solution' into one)."""
from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from indistill_lab.viz.store import solution_code

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


RESTORE = "python -m indistill_lab.viz.store --no-run"


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
        after = i + 2 if i + 1 < len(cells) and _is_scaffold(cells[i + 1]) else i + 1
        assert after < len(cells) and solution_code(cells[after]) is not None, \
            (f"{path.name} cell {i + 1}: the exercise (and its scaffold, if any) must be followed by its solution, a "
             f"markdown cell tagged 'solution' holding the code in a closed <details><summary>Solution</summary> "
             f"block ({RESTORE} {path.relative_to(path.parents[1])} turns a code cell tagged 'solution' into one)")


def _is_scaffold(cell: dict[str, Any]) -> bool:
    """An exercise's scaffold: a code cell tagged 'exercise' that the learner completes, placed between the
    exercise and its solution."""
    return cell["cell_type"] == "code" and "exercise" in cell["metadata"].get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_a_scaffold_leaves_blanks_and_runs_unfilled(path: Path) -> None:
    """A scaffold holds the blanks (`...`) the learner fills in and stands right after its exercise; Run All runs
    it unfilled (nbval checks it does not raise), so it must guard its blanks rather than use them."""
    cells = _cells(path)
    for number, cell in enumerate(cells, start=1):
        if not _is_scaffold(cell):
            continue
        previous = _source(cells[number - 2]) if number > 1 else ""
        assert cells[number - 2]["cell_type"] == "markdown" and previous.startswith("### Exercise"), \
            f"{path.name} cell {number}: a scaffold must follow its '### Exercise' cell"
        assert "..." in _source(cell), f"{path.name} cell {number}: a scaffold without a blank (`...`) to fill in"
        ast.parse(_source(cell))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_run_all_neither_runs_nor_shows_a_solution(path: Path) -> None:
    """No code cell is a solution: Run All runs code cells, and a solution run by it shows its answer and changes
    the state later cells and exercises meet."""
    solutions = [i + 1 for i, c in enumerate(_cells(path))
                 if c["cell_type"] == "code" and "solution" in c["metadata"].get("tags", [])]
    assert not solutions, f"{path.name}: cells {solutions} are solutions as code cells; {RESTORE} hides them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_solution_code_parses_and_its_kit_imports_exist(path: Path) -> None:
    """Nothing runs a hidden solution, so its code is checked here: it parses, and every name it imports from
    the kit exists (a renamed function breaks the solution, not a test run)."""
    problems = []
    for number, cell in enumerate(_cells(path), start=1):
        code = solution_code(cell)
        if code is None:
            continue
        try:
            tree = ast.parse(code)
        except SyntaxError as error:
            problems.append(f"cell {number}: does not parse ({error})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("indistill_lab"):
                module = importlib.import_module(node.module)
                problems += [f"cell {number}: {node.module} has no {alias.name}" for alias in node.names
                             if not hasattr(module, alias.name)]
    assert not problems, f"{path.name}: {problems}"
