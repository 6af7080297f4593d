"""One error convention for every entry point (`python -m indistill_lab ...` and each
`python -m indistill_lab.experiments.X`): bad input is one line `error: ...` and exit status 2, `--debug`
shows the traceback, and Ctrl-C ends with a note instead of a traceback (finished rows are already on disk).
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence

from .results import check_unique

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Bad input from the user: the message names the flag or argument and how to fix it."""


def guarded(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` under the convention and return the exit status: 0 (or what `main` returned), 2 with
    one line `error: ...` for bad input (the traceback only when argv holds `--debug`, which is consumed
    here), 130 with a note on Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        status = main(args)
    except KeyboardInterrupt:
        print("\ninterrupted: every run that finished is saved; run the same command again to resume.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as exc:
        if debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return status if isinstance(status, int) else 0


def cli(main: Callable[[list[str]], object]) -> NoReturn:
    """`python -m ...`: exit with `guarded(main)`'s status."""
    sys.exit(guarded(main))


def positive(flag: str, value: int | None, minimum: int = 1) -> None:
    """Refuse `value < minimum` for `flag` (e.g. --workers 0) before any work starts."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}.")


def seeds_from(values: Sequence[int], flag: str = "--seeds") -> list[int]:
    """`--seeds N` (one value: seeds 0..N-1) or `--seeds 0 3 7` (several: those seeds), checked."""
    values = list(values)
    if not values:
        raise UsageError(f"{flag} needs a count (e.g. 3 for seeds 0 1 2) or a list of seeds (e.g. 0 3 7).")
    if len(values) == 1:
        if values[0] < 1:
            raise UsageError(f"{flag} {values[0]}: a count of seeds must be >= 1 (or give several seeds, e.g. "
                             f"{flag} 0 3 7).")
        return list(range(values[0]))
    bad = [v for v in values if v < 0]
    if bad:
        raise UsageError(f"{flag} {' '.join(map(str, values))}: seeds must be >= 0, got {bad}.")
    return check_unique(values, flag)
