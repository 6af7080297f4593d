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
    assert seeds_from(["2-2"]) == [2] and seeds_from(["3-5", "9"]) == [3, 4, 5, 9]
    with pytest.raises(ResultsError, match="names 4 more than once"):
        seeds_from(["3-5", "4"])
    with pytest.raises(ValueError, match="the range 5-3 is empty"):
        seeds_from(["5-3"])
    with pytest.raises(ValueError, match="'x' is not a seed"):
        seeds_from(["1", "x"])


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
    (["reproduce", "--seeds", "1", "-2"], "'-2' is not a seed (>= 0) or a range A-B"),
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


def test_a_refresh_never_overwrites_a_committed_cache_entry(tmp_path: Path) -> None:
    from indistill_lab.cache import cache_path, cached

    git_repo(tmp_path)
    assert cached("sweep", {"n": 1}, lambda: [1, 2], folder=tmp_path) == [1, 2]
    commit_all(tmp_path)
    stored = cache_path("sweep", {"n": 1}, tmp_path).read_text()
    assert cached("sweep", {"n": 1}, lambda: [3, 4], refresh=True, folder=tmp_path) == [3, 4]
    assert cache_path("sweep", {"n": 1}, tmp_path).read_text() == stored
    assert cached("sweep", {"n": 1}, lambda: [5], folder=tmp_path) == [1, 2]


def test_quick_mode_caches_go_to_the_ignored_quick_folder() -> None:
    from indistill_lab.cache import _quick_twin
    from indistill_lab.config import REPO_ROOT

    twin = _quick_twin(REPO_ROOT / "results" / "precomputed" / "cascade" / "x.json")
    assert twin == REPO_ROOT / "results" / "quick" / "precomputed" / "cascade" / "x.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(twin)], cwd=REPO_ROOT)
    assert ignored.returncode == 0


def test_reproduce_reruns_a_method_whose_recipe_changed_and_on_force(tmp_path: Path, monkeypatch) -> None:
    """Rows are keyed by the method's identity: changing a method's setting reruns it (the old row moves to
    .replaced); --force reruns an unchanged one; an unchanged method is reused."""
    from indistill_lab.experiments.reproduce import reproduce
    from indistill_lab.methods import base
    from indistill_lab.methods.baselines import StudentCE

    class Variant(StudentCE):
        name = "test-ce-variant"
        description = "cross-entropy, a test's variant"
        smoothing = 0.0

    monkeypatch.setitem(base._REGISTRY, Variant.name, Variant)
    cfg = RunConfig(epochs=7, a=0, epoch_size=512, lr_drop_epoch=7, aux_epochs=1, teacher_epochs=1,
                    train_size=256, test_size=64, batch_size=64)
    logs: list[str] = []
    run = lambda **kw: reproduce(cfg, [0], [Variant.name], tmp_path, "t", log=logs.append, **kw)  # noqa: E731
    first = run()
    assert len(first) == 1 and first[0]["method_id"] == Variant().identity()
    run()
    assert any("0 to do" in m for m in logs)
    monkeypatch.setattr(Variant, "smoothing", 0.1)
    second = run()
    assert len(second) == 1 and second[0]["method_id"] == Variant().identity() != first[0]["method_id"]
    assert any("their method changed" in m for m in logs)
    assert (tmp_path / "t.csv.replaced").read_text().count("test-ce-variant") == 1
    run(force=True)
    assert any("--force" in m for m in logs) and len(read_results(tmp_path / "t.csv")) == 1
    assert (tmp_path / "t.csv.replaced").read_text().count("test-ce-variant") == 2


def test_a_table_from_before_a_column_was_added_reads_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    old = RESULT_COLUMNS[:-1]
    path.write_text(",".join(old) + "\n" + ",".join(["student-ce", "0", "0123456789"] + ["1"] * (len(old) - 3)) + "\n")
    assert read_results(path)[0]["method_id"] is None
    append_result(path, {"method": "pkt", "seed": 0, "config": "0123456789", "method_id": "abc"})
    rows = read_results(path)
    assert [r["method_id"] for r in rows] == [None, "abc"] and rows[0]["config"] == "0123456789"
    assert path.read_text().splitlines()[0] == ",".join(RESULT_COLUMNS)


def test_the_kits_home_is_the_clone_or_a_user_folder_never_site_packages(tmp_path, monkeypatch):
    from indistill_lab.config import HOME, REPO_ROOT, kit_home

    assert HOME == REPO_ROOT  # tests run from a clone: data/ and results/ are the repository's
    installed = tmp_path / "site-packages"  # an installed package: no pyproject.toml beside it
    installed.mkdir()
    monkeypatch.delenv("INDISTILL_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert kit_home(installed) == tmp_path / "share" / "indistill_lab"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert kit_home(installed) == tmp_path / "me" / ".local" / "share" / "indistill_lab"
    monkeypatch.setenv("INDISTILL_HOME", str(tmp_path / "mine"))
    assert kit_home(installed) == kit_home(REPO_ROOT) == tmp_path / "mine"  # the variable wins everywhere
