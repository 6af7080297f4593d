"""Hidden solutions still run: a notebook is executed in quick mode with each hidden solution put back as a
code cell where it stands, and no cell may fail. Run All never runs a solution, so this test is what keeps
them working. A notebook takes from 15 s to a few minutes on 2 cores, so `make test` runs a sample
(INDISTILL_SOLUTION_NOTEBOOKS, default "00"; a comma-separated list of numbers) and
`INDISTILL_SOLUTION_NOTEBOOKS=all` runs every notebook. The repository's notebooks are never written."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from indistill_lab.viz.store import solution_code

REPO = Path(__file__).resolve().parents[1]
ALL_NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SAMPLE = os.environ.get("INDISTILL_SOLUTION_NOTEBOOKS", "00")
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if SAMPLE == "all" or p.stem[:2] in SAMPLE.split(",")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_hidden_solutions_run_after_the_notebook(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    # the kernel imports this checkout's kit, whatever checkout the environment's editable install points to
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    solutions = [i for i, cell in enumerate(nb.cells) if solution_code(cell) is not None]
    assert solutions, f"{path.name} has no hidden solution (python -m indistill_lab.viz.store --no-run hides them)"
    for i in solutions:
        nb.cells[i] = nbformat.v4.new_code_cell(solution_code(nb.cells[i]))
    # CellExecutionError names the failing cell and its traceback
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    ran = [i for i in solutions if nb.cells[i].execution_count is not None]
    assert ran == solutions, f"{path.name}: solutions in cells {sorted(set(solutions) - set(ran))} did not run"
