"""`pip install .` into a fresh virtual environment without the `lab` extra (issue 25): the package installs from
a copy of the source, imports without the notebook stack, puts its data in the user's data folder, runs a tiny
`reproduce` with `--out` outside the install, and writes nothing into site-packages.

torch and torchvision are the one shortcut: on this machine `pip install torch==2.14.1 torchvision==0.29.1` is
a 5.4 GB CUDA build (1 min 46 s into a fresh venv, measured), so the fresh environment sees this interpreter's
installed copies of them and of what they require (a .pth file to a folder of links), as if pip had installed
them first (pip then treats them as installed). Everything the kit itself requires pip installs from the
package's metadata.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_STACK = ("jupyterlab", "ipywidgets", "anywidget", "plotly", "captum", "IPython", "ipykernel")


def _closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions `names` and everything they require here (markers evaluated, no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in found:
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _link_torch(folder: Path) -> None:
    """A folder of links to torch's and torchvision's installed files and those of their requirements."""
    folder.mkdir()
    for dist in _closure(["torch", "torchvision"]):
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(site / top)


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_pip_install_without_the_lab_extra_runs_a_tiny_reproduce_outside_the_install(tmp_path: Path) -> None:
    source = tmp_path / "source"  # pip builds in the source tree: a copy, so the repository is never written
    shutil.copytree(REPO / "indistill_lab", source / "indistill_lab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv, home, out = tmp_path / "venv", tmp_path / "home", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INDISTILL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", PIP_NO_INPUT="1")
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     env, tmp_path).strip())
    _link_torch(tmp_path / "torch-links")
    (site / "torch_from_host.pth").write_text(str(tmp_path / "torch-links") + "\n")

    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", str(source)], env, tmp_path)
    installed = site / "indistill_lab"
    before = _files(installed)
    check = ("import importlib.util, indistill_lab, torch; "
             f"print([m for m in {NOTEBOOK_STACK!r} if importlib.util.find_spec(m)]); "
             "print(indistill_lab.__file__); print(torch.__version__)")
    absent, where, version = _run([str(python), "-c", check], env, tmp_path).split("\n")[:3]
    assert absent == "[]", f"the notebook stack came with a plain install: {absent}"
    assert Path(where).parent == installed and version == torch.__version__

    log = _run([str(python), "-m", "indistill_lab", "data"], env, tmp_path)
    data = home / ".local" / "share" / "indistill_lab" / "data"
    assert any(data.rglob("*ubyte*")), log  # the user's data folder, not site-packages
    env["INDISTILL_QUICK"] = "1"
    log = _run([str(python), "-m", "indistill_lab", "reproduce", "--methods", "student-ce", "indistill-paper", "--seeds", "1",
                "--epochs", "7", "--no-use-zoo", "--teacher-epochs", "1", "--aux-epochs", "1", "--out", str(out)],
               env, tmp_path)
    (csv,) = out.glob("fashion-mnist-*.csv")
    rows = csv.read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == ["indistill-paper", "student-ce"], log
    assert csv.with_suffix(".md").is_file() and csv.with_suffix(".png").stat().st_size > 1000
    assert _files(installed) == before, "a run wrote into site-packages"
    assert not (home / ".local" / "share" / "indistill_lab" / "results").exists()  # --out was honoured
