"""The results rules (issue 21): exact read-back, damaged rows set aside, duplicates refused, committed tables
changed only on request, one error convention."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from indistill_lab import cli
from indistill_lab.errors import guarded, seeds_from
from indistill_lab.experiments.tables import RESULT_COLUMNS, append_result, read_results
from indistill_lab.pipeline import RunConfig
from indistill_lab.results import ResultsError, ResultsTable, read_rows, results_dir, write_report

COLUMNS = {"method": str, "seed": int, "config": str, "accuracy": float}


def table(folder: Path, update: bool = False, log: list[str] | None = None) -> ResultsTable:
    return ResultsTable("demo", {"epochs": 3}, COLUMNS, ("method", "seed"), folder, update,
                        log=(log.append if log is not None else print))


def git_repo(folder: Path) -> None:
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=folder, check=True)


def commit_all(folder: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    subprocess.run(["git", "commit", "-qm", "tables"], cwd=folder, check=True)


def test_rows_read_back_exactly_with_an_all_decimal_digest(tmp_path: Path) -> None:
    t = table(tmp_path)
    t.add({"method": "a", "seed": 0, "config": "4728471203", "accuracy": 91.5})
    t.add({"method": "a", "seed": 1, "config": "0000000012", "accuracy": 90.0})
    rows = t.rows()
    assert [r["config"] for r in rows] == ["4728471203", "0000000012"]
    assert rows[0] == {"method": "a", "seed": 0, "config": "4728471203", "accuracy": 91.5}
    assert t.todo([("a", 0), ("a", 1), ("a", 2)]) == [("a", 2)]


def test_reproduce_rows_keep_a_decimal_digest_as_text(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    append_result(path, {"method": "student-ce", "seed": 0, "config": "4728471203", "accuracy": 90.0})
    assert read_results(path)[0]["config"] == "4728471203"
    assert read_results(path)[0]["seed"] == 0


def test_file_is_named_by_configuration_and_quick_mode_writes_aside(tmp_path: Path, monkeypatch) -> None:
    a = table(tmp_path)
    b = ResultsTable("demo", {"epochs": 4}, COLUMNS, ("method", "seed"), tmp_path)
    assert a.path != b.path and a.path.parent == tmp_path
    monkeypatch.setenv("INDISTILL_QUICK", "1")
    monkeypatch.delenv("INDISTILL_OUT", raising=False)
    assert results_dir().name == "quick"
    monkeypatch.setenv("INDISTILL_OUT", str(tmp_path / "elsewhere"))
    assert results_dir() == tmp_path / "elsewhere"


def test_a_cut_last_line_is_set_aside_and_its_run_redone(tmp_path: Path) -> None:
    log: list[str] = []
    t = table(tmp_path, log=log)
    for seed in (0, 1):
        t.add({"method": "a", "seed": seed, "config": "x", "accuracy": 90.0 + seed})
    text = t.path.read_text()
    t.path.write_text(text[:-3])  # a kill in the middle of the second append
    assert [r["seed"] for r in t.rows()] == [0]
    assert log and str(t.path) in log[0] and "line 3" in log[0]
    assert t.path.with_name(t.path.name + ".damaged").read_text().startswith("a,1,x,9")
    assert t.todo([("a", 0), ("a", 1)]) == [("a", 1)]
    t.add({"method": "a", "seed": 1, "config": "x", "accuracy": 91.0})
    assert [r["accuracy"] for r in t.rows()] == [90.0, 91.0]


def test_a_damaged_line_inside_the_file_names_file_and_line(tmp_path: Path) -> None:
    t = table(tmp_path)
    for seed in (0, 1):
        t.add({"method": "a", "seed": seed, "config": "x", "accuracy": 90.0})
    lines = t.path.read_text().splitlines(keepends=True)
    t.path.write_text(lines[0] + "a,zero,x,90.0\n" + lines[2])
    with pytest.raises(ResultsError, match=r"line 2 is damaged.*fix or delete"):
        t.rows()


def test_a_non_text_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ResultsError, match="bad.csv is not a text CSV"):
        read_rows(path)


def test_duplicates_are_refused(tmp_path: Path) -> None:
    t = table(tmp_path)
    with pytest.raises(ResultsError, match="more than once"):
        t.todo([("a", 0), ("a", 0)])
    t.add({"method": "a", "seed": 0, "config": "x", "accuracy": 90.0})
    with pytest.raises(ResultsError, match="already has a row"):
        t.add({"method": "a", "seed": 0, "config": "x", "accuracy": 91.0})
    with pytest.raises(ResultsError, match="--seeds names 2 more than once"):
        seeds_from([2, 2])
    assert seeds_from([3]) == [0, 1, 2] and seeds_from([0, 3, 7]) == [0, 3, 7]


def test_a_committed_table_changes_only_with_update(tmp_path: Path) -> None:
    git_repo(tmp_path)
    t = table(tmp_path)
    t.add({"method": "a", "seed": 0, "config": "x", "accuracy": 90.0})
    report = t.path.with_suffix(".md")
    report.write_text("the committed table\n")
    commit_all(tmp_path)
    before = t.path.read_bytes()
    with pytest.raises(ResultsError, match="committed table.*--update"):
        t.add({"method": "a", "seed": 1, "config": "x", "accuracy": 91.0})
    assert not write_report(report, "a new table\n")
    assert t.path.read_bytes() == before and report.read_text() == "the committed table\n"
    updating = table(tmp_path, update=True)
    updating.add({"method": "a", "seed": 1, "config": "x", "accuracy": 91.0})
    assert updating.write_report(".md", "a new table\n") and len(updating.rows()) == 2


def test_reproduce_refuses_a_committed_table_before_any_work(tmp_path: Path, capsys) -> None:
    git_repo(tmp_path)
    cfg = RunConfig()
    path = tmp_path / f"fashion-mnist-{cfg.digest()}.csv"
    path.write_text(",".join(RESULT_COLUMNS) + "\n")
    commit_all(tmp_path)
    argv = ["reproduce", "--methods", "student-ce", "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "committed table" in err and "--update" in err
    assert path.read_text() == ",".join(RESULT_COLUMNS) + "\n"


@pytest.mark.parametrize("argv, words", [
    (["reproduce", "--epochs", "0"], "--epochs must be >= 1"),
    (["reproduce", "--epoch-size", "-5"], "--epoch-size must be >= 0"),
    (["reproduce", "--workers", "0"], "--workers must be >= 1"),
    (["reproduce", "--seeds", "0"], "--seeds 0: a count of seeds must be >= 1"),
    (["reproduce", "--seeds", "1", "-2"], "seeds must be >= 0"),
    (["reproduce", "--methods", "student-ce", "student-ce"], "--methods names student-ce more than once"),
])
def test_arguments_are_checked_first_naming_the_flag(argv: list[str], words: str, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_guarded_ends_ctrl_c_with_a_note(capsys) -> None:
    def interrupted(_args: list[str]) -> None:
        raise KeyboardInterrupt

    assert guarded(interrupted, []) == 130
    assert "interrupted: every run that finished is saved" in capsys.readouterr().err
    with pytest.raises(ValueError):
        guarded(lambda _a: (_ for _ in ()).throw(ValueError("boom")), ["--debug"])
