"""The run configuration's file form and flags: every field from TOML, flags override, clear errors."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from indistill_lab.cli import main
from indistill_lab.errors import UsageError
from indistill_lab.pipeline import RunConfig
from indistill_lab.settings import config_toml, read_config_file


def test_the_toml_form_reads_back_to_the_same_configuration(tmp_path: Path) -> None:
    for cfg in (RunConfig(), RunConfig.paper(train_size=None, model_overrides={"student": {"widths": [4, 8, 16]}}),
                RunConfig(augment=True, cache=False, kd_temperature=2.5, prune_criterion="Taylor")):
        path = tmp_path / "run.toml"
        path.write_text(config_toml(cfg))
        assert RunConfig(**read_config_file(path)) == cfg


@pytest.mark.parametrize("text, words", [
    ("epochz = 3\n", "unknown field(s) ['epochz']"),
    ('epochs = "ten"\n', "epochs = 'ten' is not a int"),
    ("use_zoo = 1\n", "use_zoo = 1 is not a bool"),
    ("epochs = 2.5\n", "epochs = 2.5 is not a int"),
    ("epochs = [\n", "is not a TOML file"),
])
def test_a_bad_file_is_named_with_the_field(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match="--config .*run.toml") as err:
        read_config_file(path)
    assert words in str(err.value)


def test_flags_override_the_file_and_every_field_has_a_flag(tmp_path: Path, capsys) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[run]\nepochs = 30\nbatch_size = 64\ntrain_size = "none"\nlr = 0.01\n')
    assert main(["reproduce", "--config", str(path), "--lr", "3e-4", "--no-use-zoo", "--kd-temperature", "2",
                 "--print-config"]) == 0
    out = read_back(tmp_path, capsys.readouterr().out)
    assert (out.epochs, out.batch_size, out.train_size, out.lr, out.use_zoo, out.kd_temperature) == \
        (30, 64, None, 3e-4, False, 2.0)
    assert out.lr_drop_epoch == 28  # derived from the file's epochs as from --epochs
    assert main(["reproduce", "--batch-size", "many", "--print-config"]) == 2
    assert "--batch-size: batch_size = 'many' is not a int" in capsys.readouterr().err


def test_full_eval_is_a_flag_and_reads_back_from_the_toml_form(tmp_path: Path, capsys) -> None:
    """--full-eval opts a short run into the full protocol (and back to its old digest); unset it stays None
    ("none" in the file: decided by the run's length)."""
    assert main(["reproduce", "--epochs", "7", "--epoch-size", "512", "--print-config"]) == 0
    auto = read_back(tmp_path, capsys.readouterr().out)
    assert main(["reproduce", "--epochs", "7", "--epoch-size", "512", "--full-eval", "--eval-size", "5000",
                 "--print-config"]) == 0
    full = read_back(tmp_path, capsys.readouterr().out)
    assert (auto.full_eval, auto.eval_size, full.full_eval, full.eval_size) == (None, 10_000, True, 5_000)
    assert auto.evaluation_size(60_000) == 10_000 and full.evaluation_size(60_000) is None
    assert auto.digest(quick=False) != full.digest(quick=False)
    # eval_size is unused on the full protocol
    assert full.digest(quick=False) == replace(full, eval_size=10_000).digest(quick=False)


def read_back(tmp_path: Path, text: str) -> RunConfig:
    path = tmp_path / "printed.toml"
    path.write_text(text)
    return RunConfig(**read_config_file(path))
