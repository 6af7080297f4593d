"""`reproduce` on Ray: a local instance started here, each (method, seed) a task, the rows those of an
in-process run (timings aside), written into the same resumable CSV."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from indistill_lab.cli import main
from indistill_lab.experiments.reproduce import reproduce
from indistill_lab.experiments.tables import read_results
from indistill_lab.pipeline import RunConfig

from test_indistill import TINY

ray = pytest.importorskip("ray", reason="Ray is the 'cluster' extra (make test installs it)")

TIMING = {"train_seconds", "eval_seconds", "wall_seconds"}


def _strip(rows):
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in rows), key=lambda r: (r["method"], r["seed"]))


def _start_local_ray() -> None:
    """A local instance of 2 CPUs; started a second time if its node does not come up (on a loaded machine
    the raylet gives up waiting for its agents' ports after some seconds)."""
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception:  # Ray raises a bare Exception when its node times out during startup
            ray.shutdown()
            if attempt == 2:
                raise


def test_ray_rows_equal_in_process_rows(tmp_path):
    cfg = RunConfig(**{**TINY, "train_size": 256, "test_size": 100}, lr=3e-3)
    methods = ["student-ce", "pkt"]  # pkt: targets from the worker's feature cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray task uses one thread, and so does the reference
    try:
        local = reproduce(cfg, seeds=[0], methods=methods, results_dir=tmp_path / "local", name="t",
                          log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    _start_local_ray()
    try:
        logs: list[str] = []
        first = reproduce(cfg, seeds=[0], methods=["pkt"], results_dir=tmp_path / "ray", name="t",
                          ray_address="auto", log=logs.append)
        assert len(first) == 1 and any("ray: 1 task(s) of 1 CPU each" in m for m in logs)
        # resumable: pkt's row stays, only student-ce goes to Ray
        rows = reproduce(cfg, seeds=[0], methods=methods, results_dir=tmp_path / "ray", name="t",
                         ray_address="auto", log=logs.append)
        assert ray.is_initialized()  # an instance this process started is left to it
    finally:
        ray.shutdown()
    assert any("1 runs already in" in m and "1 to do as Ray tasks" in m for m in logs)
    assert _strip(rows) == _strip(local) and len(rows) == 2
    assert _strip(read_results(tmp_path / "ray" / "t.csv")) == _strip(local)


def test_ray_option_errors_and_no_import_by_default(tmp_path, capsys):
    cfg = RunConfig(**TINY)
    with pytest.raises(ValueError, match="not both"):
        reproduce(cfg, seeds=[0], workers=2, ray_address="auto", results_dir=tmp_path, log=lambda m: None)
    assert main(["reproduce", "--ray", "--workers", "2"]) == 2  # --ray alone means the running cluster ('auto')
    assert "not both" in capsys.readouterr().err
    # the notebooks' path (pipeline, methods, reproduce, CLI) never imports Ray
    code = ("import sys, indistill_lab.cli, indistill_lab.experiments.reproduce, indistill_lab.pipeline, "
            "indistill_lab.methods; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
