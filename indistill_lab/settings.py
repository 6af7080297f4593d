"""The run configuration's file form (TOML) and its command-line flags: every `RunConfig` field, read from
`--config run.toml` and overridden by a flag of the same name (`epoch_size` -> `--epoch-size`).

    python -m indistill_lab reproduce --config run.toml --lr 3e-4 --no-use-zoo

A file holds the fields at its top level (or under a `[run]` table):

    epochs = 30
    batch_size = 64
    train_size = "none"        # None (the full split) is written "none"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Collection, Mapping

from .errors import UsageError
from .pipeline import RunConfig

NONE = "none"

FIELD_HELP = {
    "full_eval": "score on the full protocol (test queries x the whole training set, probe on all of it); default: "
                 "decided by the run's length, full for a run that sees at least one pass over the training set, "
                 "an --eval-size subset for a shorter one",
    "eval_size": "training examples (class-balanced) in the small-run evaluation's database and probe set",
}
"""Flag help for the fields whose meaning their name and default do not say."""


def _kinds(name: str) -> tuple[type, bool]:
    """The field's value type and whether it may be None."""
    hint = typing.get_type_hints(RunConfig)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], type(None) in args
    return typing.get_origin(hint) or hint, False


def _value(name: str, raw: Any, where: str) -> Any:
    """`raw` (from a file or a flag) as the field's type; a clear error names the field and the source."""
    kind, optional = _kinds(name)
    if optional and (raw is None or raw == NONE):
        return None
    try:
        if kind is bool:
            if isinstance(raw, str) and raw.lower() in {"true", "false"}:
                return raw.lower() == "true"
            if not isinstance(raw, bool):
                raise ValueError
            return raw
        if kind is dict:
            value = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(value, dict):
                raise ValueError
            return value
        if kind is int and (isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer())):
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        expected = kind.__name__ + (f" or {NONE!r}" if optional else "")
        raise UsageError(f"{where}: {name} = {raw!r} is not a {expected}.") from None


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The fields a TOML file sets, typed and checked (unknown names are refused with the known ones)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path} is not a TOML file ({exc}).") from None
    data = data.get("run", data) if isinstance(data.get("run"), dict) else data
    known = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"--config {path}: unknown field(s) {unknown}; the run configuration has {known}.")
    return {k: _value(k, v, f"--config {path}") for k, v in data.items()}


def _toml(value: Any) -> str:
    """One TOML value (None as "none", which `read_config_file` reads back as None where a field allows it)."""
    if value is None:
        return f'"{NONE}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise UsageError(f"{value!r} has no TOML form.")


def config_toml(cfg: RunConfig) -> str:
    """`cfg` as the TOML that `read_config_file` reads back to the same configuration."""
    return "".join(f"{f.name} = {_toml(getattr(cfg, f.name))}\n" for f in dataclasses.fields(cfg))


def add_config_flags(parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> None:
    """`--config FILE` and a flag for every `RunConfig` field but those in `skip` (the parser's own flags for
    them); each defaults to unset, so the file or the configuration's default applies."""
    parser.add_argument("--config", type=Path, metavar="FILE.toml",
                        help="the run configuration's fields from a TOML file (flags given here override it)")
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, optional = _kinds(f.name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=FIELD_HELP.get(f.name, f"run configuration field {f.name} (default {f.default})"))
        else:
            default = f.default if f.default is not dataclasses.MISSING else "{}"
            parser.add_argument(flag, metavar=kind.__name__.upper(), default=None,
                                help=(FIELD_HELP[f.name] + " (" if f.name in FIELD_HELP
                                      else f"run configuration field {f.name} (") + f"default {default}"
                                     + (f"; {NONE!r} for None" if optional else "") + ")")


def config_changes(args: argparse.Namespace, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields set by `--config` then by flags (a flag wins), typed; `given` are flags the caller already
    converted (e.g. with their own defaults)."""
    changes = read_config_file(args.config) if getattr(args, "config", None) else {}
    for f in dataclasses.fields(RunConfig):
        raw = getattr(args, f.name, None)
        if raw is not None and (given is None or f.name not in given):
            changes[f.name] = _value(f.name, raw, "--" + f.name.replace("_", "-"))
    changes.update(given or {})
    return changes
