"""The command line reports bad input as one clear line and exit status 2, never a traceback."""
from __future__ import annotations

import pytest

from indistill_lab.cli import main


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--seeds", "0"], "--seeds 0: a count of seeds must be >= 1"),
    (["reproduce", "--seeds", "-1"], "--seeds -1: a count of seeds must be >= 1"),
    (["reproduce", "--methods", "indistil"], "Unknown method(s) indistil. Known: student-ce"),
    (["reproduce", "--workers", "0"], "workers must be >= 1"),
    (["reproduce", "--lr-drop-epoch", "-3"], "--lr-drop-epoch must be >= 0"),
])
def test_bad_reproduce_arguments_exit_2_with_the_reason(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
