"""The self-distillation table driver: both regimes in one CSV told apart by configuration, resumable, the
committed rows still read as the budget regime, the over-fitting regime's extra columns, and any method
trained under the paper's SGD when asked."""
from __future__ import annotations

import pytest

from indistill_lab.config import REPO_ROOT
from indistill_lab.errors import cli
from indistill_lab.experiments import self_distillation as sd
from indistill_lab.methods import Context, get_method
from indistill_lab.methods.self_distillation import paper_sgd
from indistill_lab.pipeline import RunConfig
from indistill_lab.results import ResultsError
from indistill_lab.train import Callback


def test_the_committed_rows_are_the_budget_regime_and_the_table_is_not_changed_without_update():
    committed = sd.table(folder=REPO_ROOT / "results")
    rows = committed.rows()
    budget = sd.REGIMES["budget"].rows(rows, quick=False)
    assert len(budget) >= 17 and {r["config"] for r in budget} == {"786c9f398e", "0b27d77686"}
    assert all(r["regime"] in (None, "budget") for r in budget)  # rows from before the column existed: empty
    overfit = sd.REGIMES["overfit"].rows(rows, quick=False)
    assert len(overfit) >= 15 and {r["config"] for r in overfit} == {"f9fe58609a"}  # 5 arms x 3 seeds, found
    assert all(r["regime"] == "overfit" and r["optimizer"] == "sgd" and r["train_accuracy"] is not None
               for r in overfit)
    with pytest.raises(ResultsError, match="committed table.*--update"):
        committed.check_writable()
    before = committed.path.read_bytes()
    with pytest.raises(ResultsError, match="committed table.*--update"):  # runs to do (quick mode's): refused first
        sd.main(["run", "--regime", "overfit", "--seeds", "1", "--out", str(REPO_ROOT / "results")])
    assert committed.path.read_bytes() == before


def test_overfit_regime_runs_every_arm_resumes_and_reports_paired_differences(tmp_path, capsys):
    sd.main(["run", "--regime", "overfit", "--seeds", "1", "--out", str(tmp_path)])
    rows = sd.table(folder=tmp_path).rows()
    assert [r["method"] for r in rows] == list(sd.METHODS)
    assert {(r["regime"], r["optimizer"], r["arch"]) for r in rows} == {("overfit", "sgd", "auxiliary")}
    assert all(0 <= r["train_accuracy"] <= 100 and 0 <= r["accuracy"] <= 100 for r in rows)
    heads = {r["method"]: r["head_accuracy"] for r in rows}
    assert heads["student-ce"] is None and heads["self-dsr"] is None and heads["hinton-kd"] is None
    assert heads["self-drg"] is not None and heads["self-drg-dsr"] is not None
    before = (tmp_path / "self-distillation.csv").read_text()
    capsys.readouterr()
    sd.main(["run", "--regime", "overfit", "--seeds", "1", "--out", str(tmp_path)])
    assert "0 run(s) to do" in capsys.readouterr().out
    assert (tmp_path / "self-distillation.csv").read_text() == before
    report = (tmp_path / "self-distillation.md").read_text()
    ce = next(r for r in rows if r["method"] == "student-ce")
    both = next(r for r in rows if r["method"] == "self-drg-dsr")
    assert "## Regime `overfit`" in report and "## Regime `budget`" not in report
    assert f"auxiliary, sgd, self-drg-dsr: s0: {both['accuracy'] - ce['accuracy']:+.2f}" in report


def test_a_report_without_rows_says_to_run_first(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli(lambda argv: sd.main(["report", "--out", str(tmp_path)]))
    assert stop.value.code == 2 and "has no rows yet" in capsys.readouterr().err


class _Optimizer(Callback):
    def on_epoch_end(self, trainer, logs):
        group = trainer.optimizer.param_groups[0]
        self.seen = (type(trainer.optimizer).__name__, group["lr"], group.get("momentum"), group["weight_decay"])


def test_any_method_trains_under_the_papers_sgd_when_asked(tiny_split):
    cfg = RunConfig(epoch_size=32, batch_size=16)
    sgd, adam = _Optimizer(), _Optimizer()
    get_method("student-ce").train(Context(cfg, tiny_split), seed=0, epochs=1, callbacks=[sgd], optimizer=paper_sgd(10))
    get_method("student-ce").train(Context(cfg, tiny_split), seed=0, epochs=1, callbacks=[adam])
    assert sgd.seen[0] == "SGD" and sgd.seen[1:] == pytest.approx((0.1, 0.9, 5e-4))
    assert adam.seen[:2] == ("Adam", cfg.lr)
    own_loop = _Optimizer()  # a method with its own loop takes the same options
    get_method("self-dsr").train(Context(cfg, tiny_split), seed=0, epochs=1, callbacks=[own_loop],
                                 optimizer=paper_sgd(10))
    assert own_loop.seen[0] == "SGD" and own_loop.seen[1:] == pytest.approx((0.1, 0.9, 5e-4))
    assert paper_sgd(200)["lr_schedule"] == {60: pytest.approx(0.01), 120: pytest.approx(0.001),
                                              160: pytest.approx(0.0001)}
