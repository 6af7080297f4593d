"""The package's shape: the public API re-exported lazily from `indistill_lab`, no import cycle between
its modules, and the library (drivers included) importable without the notebook stack (the `lab` extra)."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import indistill_lab

PACKAGE = Path(indistill_lab.__file__).parent
NOTEBOOK_STACK = ("plotly", "ipywidgets", "anywidget", "captum", "jupyterlab", "IPython")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_public_name_is_the_object_of_its_module() -> None:
    assert len(indistill_lab.__all__) >= 40
    for name in indistill_lab.__all__:
        module, attribute = indistill_lab._EXPORTS[name]
        assert getattr(indistill_lab, name) is getattr(importlib.import_module(f"indistill_lab.{module}"), attribute)
    with pytest.raises(AttributeError, match="has no attribute 'Trainr'"):
        indistill_lab.Trainr  # noqa: B018


def test_import_is_cheap_and_names_load_on_first_use() -> None:
    out = _run("import sys, indistill_lab; print('torch' in sys.modules); "
               "indistill_lab.ModelSpec; print('torch' in sys.modules, 'indistill_lab.train' in sys.modules)")
    assert out.split() == ["False", "True", "False"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere (module level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            targets = [f"{target}.{a.name}" for a in node.names] + [target]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def test_no_import_cycle_between_modules() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(files)) for m, p in files.items()}
    assert "indistill_lab.distributed" in graph["indistill_lab.train"]  # the walk sees the edges

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_library_and_drivers_import_without_the_notebook_stack() -> None:
    """Core modules, the CLI and the reproduce driver must import (and the README's table plot be drawable)
    where only the library's dependencies are installed: the notebook stack is blocked here."""
    core = sorted(m for m in (_module_name(p) for p in PACKAGE.rglob("*.py"))
                  if ".viz" not in m and ".experiments" not in m and not m.endswith("__main__"))
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {NOTEBOOK_STACK!r}:
            raise ImportError(f'{{name}} is blocked: not installed without the lab extra')
sys.meta_path.insert(0, Block())
for m in {core!r} + ['indistill_lab.experiments.reproduce', 'indistill_lab.experiments.tables',
                     'indistill_lab.viz.static']:
    importlib.import_module(m)
import indistill_lab.flow as flow
try:
    import torch
    flow.attribution_maps(torch.nn.Linear(1, 1), torch.zeros(1, 1, 1, 1), 0, layers=[])
except ImportError as exc:
    print(exc)
"""
    out = _run(code)
    assert "pip install 'indistill_lab[lab]'" in out


def test_a_users_notebook_finds_the_spec_error_the_output_folder_and_quick_mode(tmp_path, monkeypatch) -> None:
    """Notebook 10 uses only `from indistill_lab import ...`: the error a wrong module path raises, where files
    go (`--out` / INDISTILL_OUT) and whether quick mode is on are public names too."""
    from indistill_lab import SpecError, quick_mode, results_dir
    from indistill_lab.adapter import SpecError as adapter_error

    assert SpecError is adapter_error and issubclass(SpecError, ValueError)
    monkeypatch.setenv("INDISTILL_OUT", str(tmp_path / "env"))
    assert results_dir() == tmp_path / "env"
    assert results_dir(tmp_path / "flag") == tmp_path / "flag"  # --out wins over the environment variable
    monkeypatch.setenv("INDISTILL_QUICK", "1")
    assert quick_mode() is True
    monkeypatch.setenv("INDISTILL_QUICK", "0")
    assert quick_mode() is False


def test_notebook_10_uses_only_the_public_api() -> None:
    """'Your own model' is written against `from indistill_lab import ...` alone (its hidden solutions too): every
    kit import is of the package itself, and every name it takes is exported."""
    import json

    from indistill_lab.viz.store import solution_code

    notebook = PACKAGE.parent / "notebooks" / "10_your_own_model.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    sources += [code for c in cells if (code := solution_code(c)) is not None]
    taken = []
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("indistill_lab.") for a in node.names), ast.unparse(node)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("indistill_lab"):
                assert node.module == "indistill_lab", f"notebook 10 imports from a submodule: {ast.unparse(node)}"
                taken += [a.name for a in node.names]
    assert taken and set(taken) <= set(indistill_lab.__all__), set(taken) - set(indistill_lab.__all__)
    assert {"propose_spec", "with_spec", "split_from_tensors", "prepare_models", "evaluate_student"} <= set(taken)
