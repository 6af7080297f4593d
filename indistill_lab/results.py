"""Results files that are never lost or silently wrong: one CSV row per finished run, for every driver.

    table = ResultsTable("cascade", config={"budget": ...}, key=("kind", "seed"),
                         columns={"kind": str, "seed": int, "accuracy": float})
    for key in table.todo([("cascade", 0), ("cascade", 1)]):   # the runs not in the file yet
        table.add(train_and_score(*key))                         # one flushed line per finished run

The rules, the same for every table:
- the file is `<folder>/<name>-<digest of config>.csv`: a variant configuration never writes another's file;
  quick mode writes under `results/quick/` (git-ignored), so tests and CI never touch committed tables;
- a file tracked by git (a committed table) is only added to with `update=True` (`--update` on the command
  line): a valid run never changes what the README quotes by accident;
- rows read back exactly as written: each column has a type (a digest made of decimal digits stays a string);
- a duplicate key is refused, in the file and in what a caller asks for;
- a cut trailing line (a kill during an append, a full disk) is set aside in `<file>.damaged` with a message
  naming file and line, so the run is redone; a damaged line elsewhere stops with its file and line number.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .config import HOME, quick_mode

OUT_ENV = "INDISTILL_OUT"
ColumnType = Callable[[str], Any]


class ResultsError(ValueError):
    """A results file that cannot be used as it is: the message names the file, the line and the fix."""


def results_dir(out: Path | str | None = None) -> Path:
    """Where tables go: `out` if given, else `$INDISTILL_OUT`, else `results/` in the kit's home (the repository in a
    clone, a user data folder for an installed package: `config.kit_home`; `results/quick/`, git-ignored, in
    quick mode)."""
    if out is not None:
        return Path(out).expanduser()
    if os.environ.get(OUT_ENV):
        return Path(os.environ[OUT_ENV]).expanduser()
    return HOME / "results" / ("quick" if quick_mode() else "")


def config_digest(config: Mapping[str, Any]) -> str:
    """10 hex digits identifying a configuration (JSON with sorted keys, so dict order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def is_tracked(path: Path | str) -> bool:
    """True when `path` is a file git tracks (a committed result); False outside a repository or without git."""
    path = Path(path).resolve()
    if not path.exists():
        return False
    try:
        done = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent,
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def repair_hint(path: Path | str, kind: str | None = None) -> str:
    """What to do with a file that fails to load, by what it is (`kind`: 'zoo', 'cache' or 'checkpoint';
    told from where the file lives when None): a shipped zoo model is restored from git (`zoo build --force`
    would retrain and overwrite the committed zoo), a cache is deleted (it is remade), a training checkpoint
    is deleted to start that run afresh."""
    path = Path(path).resolve()
    if kind is None:
        caches = [(HOME / "results" / d).resolve() for d in ("cache", "precomputed")]
        kind = ("zoo" if (HOME / "data" / "zoo").resolve() in path.parents
                else "cache" if any(c in path.parents for c in caches) else "checkpoint")
    if kind == "zoo":
        return (f"It is a zoo model: restore it with `git checkout -- {path}` (do not delete it; "
                "`zoo build --force` would retrain and overwrite every zoo model).")
    if kind == "cache":
        return f"It is a cache: delete it (`rm {path}`) and run again; it is remade."
    return f"If it is a training checkpoint, delete it (`rm {path}`) to start that run afresh."


def check_unique(values: Sequence[Any], what: str) -> list[Any]:
    """`values` as a list, refusing an empty one and repeats (two runs of one seed are not two seeds)."""
    values = list(values)
    if not values:
        raise ResultsError(f"{what} is empty: give at least one.")
    repeats = sorted({str(v) for v in values if values.count(v) > 1})
    if repeats:
        raise ResultsError(f"{what} names {', '.join(repeats)} more than once: each run is made once; drop the "
                           "repeats.")
    return values


def _parse(value: str, kind: ColumnType | None) -> Any:
    if value == "":
        return None
    if kind is None:  # an undeclared column: a number when it reads as one
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    if kind is int:
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    return kind(value)


def _encode(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else value


def read_rows(path: Path | str, columns: Sequence[str] | None = None,
              types: Mapping[str, ColumnType] | None = None,
              log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[dict[str, Any]]:
    """Rows of a results CSV, each cell of its declared type (`types`; columns not declared are numbers when
    they read as one, so declare identifiers such as `config` as `str`). Empty when the file is absent.

    `columns`, when given, must be the file's header, or extend it (a file from before columns were added
    reads back with None in them). A cut or malformed last line (what a kill during an
    append leaves) is moved to `<file>.damaged` with a warning, so its run is made again; a damaged line
    elsewhere raises `ResultsError` with the file and line number.
    """
    path, types = Path(path), dict(types or {})
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path} is not a text CSV ({exc.reason} at byte {exc.start}): move it aside and run "
                           "again.") from None
    lines = text.splitlines(keepends=True)
    header = next(csv.reader([lines[0]])) if lines else []
    if columns is not None and header != list(columns)[:len(header)]:
        raise ResultsError(f"{path} has the columns {header}, not {list(columns)}: it was written by another "
                           "version of this table. Move it aside (its rows stay valid for their own "
                           "configuration) and run again.")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        try:
            if not line.endswith("\n"):
                raise ValueError("the line was cut before its end")
            cells = next(csv.reader(io.StringIO(line)))
            if len(cells) != len(header):
                raise ValueError(f"{len(cells)} fields, not {len(header)}")
            row = {col: _parse(cell, types.get(col)) for col, cell in zip(header, cells)}
            rows.append({**dict.fromkeys(columns or []), **row})  # columns added since the file was written: None
        except ValueError as exc:
            if number != len(lines):
                raise ResultsError(f"{path} line {number} is damaged ({exc}): fix or delete that line (its run "
                                   "will be made again), then run again.") from None
            damaged = path.with_name(path.name + ".damaged")
            with damaged.open("a") as f:
                f.write(line if line.endswith("\n") else line + "\n")
            path.write_text("".join(lines[:-1]))
            log(f"warning: {path} line {number} was damaged ({exc}); it is set aside in {damaged} and its run "
                "will be made again.")
    return rows


def check_writable(path: Path | str, update: bool) -> None:
    """Refuse, before any work, to change a committed file (tracked by git) unless `update` was asked for."""
    if not update and is_tracked(path):
        raise ResultsError(f"{path} is a committed table (tracked by git) and this run would change it. "
                           "Pass --update (update=True) to change it, or write elsewhere with --out DIR (or INDISTILL_OUT=DIR).")


def append_row(path: Path | str, columns: Sequence[str], row: Mapping[str, Any], update: bool = False) -> None:
    """Append one finished run as one flushed line (the header with the file's first row); refuses columns
    the file does not declare and a committed file without `update`."""
    path, columns = Path(path), list(columns)
    unknown = sorted(set(row) - set(columns))
    if unknown:
        raise ResultsError(f"row has columns {unknown} that {path.name} does not declare.")
    check_writable(path, update)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with path.open() as f:
            header = next(csv.reader([f.readline()]), [])
        if header != columns[:len(header)]:
            raise ResultsError(f"{path} has the columns {header}, not {columns}: move it aside or write "
                               "elsewhere (--out DIR).")
        if header != columns:
            _add_columns(path, columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if new:
        writer.writerow(columns)
    writer.writerow([_encode(row.get(c)) for c in columns])
    with path.open("a", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _add_columns(path: Path, columns: list[str]) -> None:
    """Rewrite a file whose header is a prefix of `columns` with the full header, old rows padded empty."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(r + [""] * (len(columns) - len(r)) for r in rows[1:])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def remove_rows(path: Path | str, drop: Callable[[dict[str, Any]], bool], types: Mapping[str, ColumnType],
                update: bool = False) -> int:
    """Move the rows for which `drop(row)` holds into `<file>.replaced` (a rerun's old rows are kept there,
    not lost); returns how many moved. A committed file only with `update`."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    header = next(csv.reader([lines[0]]))
    keep, moved = [lines[0]], []
    for line in lines[1:]:
        cells = next(csv.reader(io.StringIO(line)))
        row = {c: _parse(v, types.get(c)) for c, v in zip(header, cells)}
        (moved if drop(row) else keep).append(line)
    if moved:
        check_writable(path, update)
        with path.with_name(path.name + ".replaced").open("a") as f:
            f.writelines(moved)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)
    return len(moved)


def write_report(path: Path | str, text: str, update: bool = False) -> bool:
    """Write a report (markdown) atomically. A committed report is rewritten only with `update`, and an
    unchanged one not at all. Returns whether it was written."""
    path = Path(path)
    if path.is_file() and (path.read_text() == text or (not update and is_tracked(path))):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


class ResultsTable:
    """One results CSV: typed columns, rows keyed by `key` (e.g. method and seed), resumable.

    `config` holds everything the rows depend on besides their key; its digest names the file, so two
    configurations never share one (`stem` names a file that holds several configurations, told apart by a
    key column, as the InDistill tables do). Columns missing from a row are written empty and read back as None;
    list and dict values are written as JSON (declare such a column as `json.loads`).
    """

    def __init__(self, name: str, config: Mapping[str, Any], columns: Mapping[str, ColumnType],
                 key: Sequence[str], folder: Path | str | None = None, update: bool = False,
                 stem: str | None = None,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        missing = [k for k in key if k not in columns]
        if missing:
            raise ResultsError(f"key columns {missing} are not among the columns {list(columns)}.")
        self.name, self.config, self.columns, self.key = name, dict(config), dict(columns), tuple(key)
        self.digest = config_digest(self.config)
        self.path = results_dir(folder) / f"{stem or f'{name}-{self.digest}'}.csv"
        self.update, self.log = update, log

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the file, typed (empty when the file does not exist). A cut last line is set aside."""
        return read_rows(self.path, list(self.columns), self.columns, self.log)

    def done(self) -> set[tuple[Any, ...]]:
        """Keys of the rows already in the file."""
        return {tuple(r[k] for k in self.key) for r in self.rows()}

    def todo(self, keys: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The asked-for keys not yet in the file, in the order given (repeats refused)."""
        keys = check_unique([tuple(k) for k in keys], f"the runs asked for ({', '.join(self.key)})")
        done = self.done()
        return [k for k in keys if k not in done]

    def check_writable(self) -> None:
        """Refuse, before any work, to add to a committed table unless `update` was asked for."""
        check_writable(self.path, self.update)

    def add(self, row: Mapping[str, Any]) -> None:
        """Append one finished run as one flushed line; a key already in the file is refused."""
        key = tuple(row.get(k) for k in self.key)
        if key in self.done():
            raise ResultsError(f"{self.path} already has a row for {dict(zip(self.key, key))}: a run is made once.")
        append_row(self.path, list(self.columns), row, self.update)

    def write_report(self, suffix: str, text: str) -> bool:
        """Write a report beside the CSV (e.g. '.md'); see `write_report`."""
        return write_report(self.path.with_suffix(suffix), text, self.update)
