"""Result files: one CSV row per (method, seed) run, appended as runs finish; the summary table (mean ± std
over seeds), its markdown and PNG, and rows gathered across files."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import HOME
from ..methods import describe, method_names
from ..pipeline import RunConfig, nominal_train_size
from ..results import append_row, read_rows, write_report as write_text_report


RESULT_COLUMNS = ["method", "seed", "config", "epochs", "epoch_size", "a", "optimizer_state", "accuracy",
                  "accuracy_from", "map_e", "map_c", "map_std_e", "map_std_c", "top100_e", "top100_c",
                  "train_seconds", "eval_seconds", "wall_seconds", "phases", "method_id"]


RESULT_TYPES = {"method": str, "seed": int, "config": str, "epochs": int, "epoch_size": int, "a": int,
                "optimizer_state": str, "accuracy_from": str, "phases": str, "method_id": str,
                **{c: float for c in ("accuracy", "map_e", "map_c", "map_std_e", "map_std_c", "top100_e",
                                      "top100_c", "train_seconds", "eval_seconds", "wall_seconds")}}
"""How each column reads back: the config digest stays a string even when it is all decimal digits."""


def read_results(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a results CSV, typed (see `results.read_rows`; empty list when the file does not exist). Rows of a
    table written before a column was added have it as None."""
    rows = read_rows(path, types=RESULT_TYPES)
    return [{**dict.fromkeys(RESULT_COLUMNS), **r} if set(r) <= set(RESULT_COLUMNS) else r for r in rows]


def append_result(path: Path | str, row: Mapping[str, Any], columns: Sequence[str] = RESULT_COLUMNS,
                  update: bool = False) -> None:
    """Append one run's row (header written with the first row), flushed so a killed run loses nothing.
    `columns` are the file's (a results table's by default; an experiment's own CSV names its own); a
    committed file is only extended with `update` (see `results.append_row`)."""
    append_row(path, columns, row, update)


SUMMARY_COLUMNS = [("mAP (e)", "map_e"), ("mAP (c)", "map_c"), ("top-100 (e)", "top100_e"),
                   ("top-100 (c)", "top100_c"), ("accuracy", "accuracy"), ("wall s / run", "wall_seconds")]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method (in registry order): number of seeds and (mean, std) of each summary column."""
    out = []
    present = {r["method"] for r in rows}
    for method in [m for m in method_names() if m in present] + sorted(present - set(method_names())):
        mine = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "seeds": len(mine),
                                 "accuracy_from": mine[0]["accuracy_from"]}
        for _, key in SUMMARY_COLUMNS:
            entry[key] = mean_std([float(r[key]) for r in mine])
        out.append(entry)
    return out


def markdown_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table: mean +/- std over seeds, best mean per retrieval column in bold."""
    summary = summarise(rows)
    best = {key: max(s[key][0] for s in summary) for _, key in SUMMARY_COLUMNS[:5]}
    lines = ["| method | seeds | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
             "|---|---|" + "---|" * len(SUMMARY_COLUMNS)]
    for s in summary:
        cells = []
        for _, key in SUMMARY_COLUMNS:
            mean, std = s[key]
            text = f"{mean:.0f} ± {std:.0f}" if key == "wall_seconds" else f"{mean:.2f} ± {std:.2f}"
            if key == "accuracy" and s["accuracy_from"] == "probe":
                text += "*"
            cells.append(f"**{text}**" if key in best and mean == best[key] else text)
        lines.append(f"| {s['method']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, Any]], cfg: RunConfig, md_path: Path, png_path: Path,
                 update: bool = False) -> None:
    """Write the markdown table (with the configuration and method descriptions) and the PNG plot; a committed
    report is rewritten only with `update` (and only when its table changed)."""
    if not rows:
        return
    from ..viz.static import results_png

    subset = cfg.evaluation_size(nominal_train_size(cfg))
    train = "train set" if subset is None else (f"a class-balanced {subset:,}-image subset of the train set (the "
                                                "small-run evaluation; --full-eval for the full protocol)")
    text = [f"# InDistill and baselines on {cfg.dataset}", "",
            f"Generated by `python -m indistill_lab reproduce --dataset {cfg.dataset}` (config `{cfg.digest()}`), "
            f"one row per method, mean ± sample std over seeds. Retrieval: queries = test set, database = "
            f"{train}, penultimate features; mAP = 11-point interpolated (the InDistill tables' metric). "
            f"Accuracy marked * comes from a linear probe fitted on frozen {'train' if subset is None else 'subset'} "
            "embeddings (the method never trains the classifier). Wall time = training + evaluation of one run.", "",
            markdown_summary(rows), "",
            "Configuration: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()), "",
            "Methods:", *[f"- `{m}`: {d}" for m, d in describe().items() if any(r["method"] == m for r in rows)], ""]
    if not write_text_report(md_path, "\n".join(text), update):
        return
    results_png(summarise(rows), png_path, title=f"{cfg.dataset}: retrieval mAP by method (mean ± std over seeds)")


def rows_matching(results_dir: Path | str = HOME / "results", **columns: Any) -> list[dict[str, Any]]:
    """Rows of every current-format results CSV in `results_dir` whose columns equal `columns`
    (e.g. epochs=15, a=0, seed=0), whatever their file: how a notebook gathers the same budget
    under several optimizer-state policies, made in different runs."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.csv")):
        with path.open() as f:
            header = f.readline().strip().split(",")
            if header != RESULT_COLUMNS[:len(header)] or len(header) < len(RESULT_COLUMNS) - 1:
                continue
        rows += [r for r in read_results(path) if all(r.get(k) == v for k, v in columns.items())]
    return rows
