"""Bad input, module by module: each gets an error of a stated type whose words name the problem.

Also: a failed or interrupted run leaves every file under data/ and results/ byte-identical.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch

from indistill_lab import zoo
from indistill_lab.alignment import linear_cka
from indistill_lab.cli import main
from indistill_lab.config import REPO_ROOT
from indistill_lab.curriculum import Curriculum, CurriculumError
from indistill_lab.data import Loader, Split, load_split
from indistill_lab.fashion_mnist import FASHION_FILES, DatasetCorrupt, ensure_fashion_mnist
from indistill_lab.losses import PKTLoss
from indistill_lab.metrics import retrieval_metrics
from indistill_lab.models import build_model
from indistill_lab.pruning import prune_to_widths
from indistill_lab.retrieval import distances
from indistill_lab.train import Trainer


# -- data ---------------------------------------------------------------------------------------
def _idx_files(n: int = 20) -> dict[str, bytes]:
    """A tiny valid Fashion-MNIST in idx format: n images and labels per split."""
    out = {}
    for name in FASHION_FILES:
        if "images" in name:
            out[name] = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(n * 784)
        else:
            out[name] = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
    return out


def _write_raw(root: Path, files: dict[str, bytes]) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, blob in files.items():
        (raw / name).write_bytes(blob)
    return raw


def _damaged(name: str, how: str) -> tuple[dict[str, bytes], str]:
    files = _idx_files()
    blob = files[name]
    if how == "truncated":
        files[name] = blob[:-3]
    elif how == "magic":
        files[name] = (1234).to_bytes(4, "big") + blob[4:]
    elif how == "label":
        files[name] = blob[:-1] + bytes([10])
    elif how == "header":
        files[name] = blob[:5]
    elif how == "count":  # a consistent file of 21 items next to its split's 20
        files[name] = blob[:4] + (21).to_bytes(4, "big") + blob[8:] + bytes(784)
    return files, name


@pytest.mark.parametrize("name, how, words", [
    ("train-images-idx3-ubyte", "truncated", "truncated or padded"),
    ("t10k-labels-idx1-ubyte", "truncated", "truncated or padded"),
    ("train-images-idx3-ubyte", "magic", "header magic 1234, expected 2051"),
    ("train-labels-idx1-ubyte", "magic", "header magic 1234, expected 2049"),
    ("train-labels-idx1-ubyte", "label", "label 10 is out of range"),
    ("t10k-images-idx3-ubyte", "header", "shorter than the 16-byte idx header"),
    ("train-images-idx3-ubyte", "count", "21 images but 20 labels"),
])
def test_data_corrupt_raw_file_is_named_with_the_fix(tmp_path, name, how, words):
    files, _ = _damaged(name, how)
    _write_raw(tmp_path, files)
    with pytest.raises(DatasetCorrupt, match="python -m indistill_lab data") as err:
        ensure_fashion_mnist(tmp_path, debian_dir=tmp_path / "nope", allow_download=False)
    assert words in str(err.value) and "FashionMNIST/raw" in str(err.value)
    with pytest.raises(DatasetCorrupt, match=words):  # loading checks too, before torchvision reads it
        load_split("fashion-mnist", "train", root=tmp_path, quick=False)


def test_data_full_size_file_with_changed_bytes_fails_its_sha256(tmp_path):
    n = 10_000  # the official t10k size: its content hash is checked
    files = _idx_files()
    files["t10k-labels-idx1-ubyte"] = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(n)
    files["t10k-images-idx3-ubyte"] = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    files["t10k-images-idx3-ubyte"] += bytes(n * 784)
    _write_raw(tmp_path, files)
    with pytest.raises(DatasetCorrupt, match="sha256 differs from the official release"):
        ensure_fashion_mnist(tmp_path, debian_dir=tmp_path / "nope", allow_download=False)


def test_data_cli_does_not_say_ready_for_a_truncated_file(tmp_path, monkeypatch, capsys):
    files, _ = _damaged("train-images-idx3-ubyte", "truncated")
    _write_raw(tmp_path, files)
    monkeypatch.setenv("INDISTILL_DATA", str(tmp_path))
    monkeypatch.setattr("indistill_lab.fashion_mnist.DEBIAN_FASHION_DIR", tmp_path / "nope")
    assert main(["data"]) == 2
    out = capsys.readouterr()
    assert "ready" not in out.out and "truncated" in out.err and "Traceback" not in out.err


@pytest.mark.parametrize("damage", ["truncated-gz", "bad-labels"])
def test_data_damaged_debian_archive_is_named_and_leaves_no_part_file(tmp_path, damage):
    debian = tmp_path / "debian"
    debian.mkdir()
    files = _idx_files()
    if damage == "bad-labels":
        files["t10k-labels-idx1-ubyte"] = files["t10k-labels-idx1-ubyte"][:-1] + bytes([99])
    for name, blob in files.items():
        (debian / f"{name}.gz").write_bytes(gzip.compress(blob))
    if damage == "truncated-gz":
        gz = debian / "train-images-idx3-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:-30])
    root = tmp_path / "data"
    with pytest.raises(DatasetCorrupt, match="apt-get install --reinstall dataset-fashion-mnist") as err:
        ensure_fashion_mnist(root, debian_dir=debian, allow_download=False)
    assert ("train-images-idx3-ubyte.gz cannot be decompressed" in str(err.value) if damage == "truncated-gz"
            else "label 99 is out of range" in str(err.value))
    assert list((root / "FashionMNIST" / "raw").iterdir()) == []  # no .part, no half-extracted set


@pytest.mark.parametrize("n", [-5, 0, 2.5, True])
def test_data_subset_size_must_be_positive_whole(tiny_split, n):
    with pytest.raises(ValueError, match="subset size must be a positive whole number"):
        tiny_split.subset(n)


# -- metrics / retrieval ------------------------------------------------------------------------
def _clusters(offset: float, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    x = (torch.randn(4, 8, generator=g) * 2)[y] + torch.randn(400, 8, generator=g)
    return (x.double() + offset).to(dtype), y


@pytest.mark.parametrize("offset", [1e3, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_metrics_euclidean_precision_does_not_depend_on_a_common_offset(offset, dtype):
    x, y = _clusters(0.0, torch.float64)
    reference = retrieval_metrics(x[:80], y[:80], x, y, top_k=10)
    shifted, _ = _clusters(offset, dtype)
    got = retrieval_metrics(shifted[:80], y[:80], shifted, y, top_k=10)
    assert got == pytest.approx(reference, abs=1e-4 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_metrics_euclidean_exact_ties_follow_the_rule_at_any_offset(offset):
    # query at 0; one relevant and one irrelevant item both at distance 1 (integer coordinates).
    q = torch.tensor([[0.0, 0.0]]) + offset
    db = torch.tensor([[1.0, 0.0], [0.0, -1.0], [5.0, 5.0]]) + offset
    qy, dby = torch.tensor([0]), torch.tensor([0, 1, 0])
    pessimistic = retrieval_metrics(q, qy, db, dby, top_k=1)
    optimistic = retrieval_metrics(q, qy, db, dby, ties="optimistic", top_k=1)
    assert pessimistic["map"] == pytest.approx((1 / 2 + 2 / 3) / 2) and pessimistic["precision_at_1"] == 0.0
    assert optimistic["map"] == pytest.approx((1 + 2 / 3) / 2) and optimistic["precision_at_1"] == 1.0


def test_metrics_cosine_parallel_vectors_tie_exactly():
    # Parallel integer vectors of many lengths: float32 normalisation used to split their ties.
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        v = torch.randint(1, 50, (1, 16), generator=g).float()
        db = v * torch.tensor([1.0, 3.0, 7.0, 11.0, 13.0, 17.0])[:, None]
        dby = torch.tensor([0, 1, 0, 1, 0, 1])
        got = retrieval_metrics(v, torch.tensor([0]), db, dby, "cosine", top_k=1)
        assert got["map"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)
        assert len(set(distances(v[0], db, "cosine").tolist())) == 1


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_retrieval_distances_reject_nan_features(distance):
    with pytest.raises(ValueError, match="NaN or infinite"):
        distances(torch.tensor([float("nan"), 0.0]), torch.ones(3, 2), distance)
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_metrics(torch.ones(1, 2), torch.tensor([0]), torch.full((2, 2), float("nan")),
                          torch.tensor([0, 1]), distance, top_k=1)


def test_retrieval_distances_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same model"):
        distances(torch.zeros(3), torch.ones(4, 2))


def test_retrieval_zero_vector_is_at_cosine_distance_one():
    d = distances(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "cosine")
    assert d.tolist() == [1.0, 1.0]


# -- alignment (CKA) and losses (PKT) ----------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda x: torch.full_like(x, float("nan")), "NaN or infinite"),
    (lambda x: torch.full_like(x, 3.0), "a representation is constant"),
    (lambda x: torch.zeros_like(x), "a representation is constant"),
])
def test_alignment_cka_on_degenerate_features(make, words):
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=words):
        linear_cka(x, make(x))


def test_losses_pkt_rejects_non_finite_teacher_features():
    s = torch.randn(8, 4)
    with pytest.raises(ValueError, match="pkt: the teacher features contain NaN"):
        PKTLoss()(s, torch.full((8, 4), float("inf")))


# -- curriculum ---------------------------------------------------------------------------------
PHASE = {"teacher": "stage1", "student": "stage1", "loss": "mse", "weight": 1.0, "start": 0, "epochs": 2}


@pytest.mark.parametrize("text, words", [
    ('{"phases": [', "not valid JSON"),
    ("[1, 2]", "not a list"),
    ('"phases"', "not a str"),
    ('{"phases": 5, "total_epochs": 3}', "'phases' must be a list of objects"),
    ('{"phases": [3], "total_epochs": 3}', "'phases' must be a list of objects"),
    (json.dumps({"phases": [PHASE | {"weight": "0.5"}], "total_epochs": 2}), "weight '0.5' is not a number"),
    (json.dumps({"phases": [PHASE | {"colour": 1}], "total_epochs": 2}), "unexpected keyword argument 'colour'"),
    (json.dumps({"phases": [{"teacher": "stage1"}], "total_epochs": 2}), "missing 1 required positional"),
    (json.dumps({"phases": [PHASE], "final": 3, "total_epochs": 2}), "'final' must be an object"),
    (json.dumps({"phases": [PHASE], "total_epochs": "2"}), "total_epochs is '2'"),
    (json.dumps({"phases": [PHASE], "stages": 1, "total_epochs": 2}), "unknown keys ['stages']"),
])
def test_curriculum_from_json_on_malformed_input(text, words):
    with pytest.raises(CurriculumError) as err:
        Curriculum.from_json(text)
    assert words in str(err.value)


def test_curriculum_from_dict_on_a_list():
    with pytest.raises(CurriculumError, match="must be an object"):
        Curriculum.from_dict([PHASE])  # type: ignore[arg-type]


# -- train --------------------------------------------------------------------------------------
def test_train_checkpoint_path_that_is_a_directory_is_rejected_up_front(tmp_path):
    with pytest.raises(ValueError, match="is a directory; give a file path"):
        Trainer(build_model("student"), checkpoint=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, words", [
    ({"lr": -1e-3}, "'lr': -0.001"),
    ({"lr_schedule": {3: -1e-4}}, "'lr_schedule[3]': -0.0001"),
    ({"lr": float("nan")}, "finite and >= 0"),
    ({"lr_schedule": {-2: 1e-4}}, "keys epochs >= 0"),
])
def test_train_negative_or_non_finite_learning_rates(kwargs, words):
    with pytest.raises(ValueError) as err:
        Trainer(build_model("student"), progress=False, **kwargs)
    assert words in str(err.value)


def test_train_objective_returning_a_tensor(tiny_split):
    def objective(model, x, y, epoch):
        return torch.nn.functional.cross_entropy(model(x), y)

    trainer = Trainer(build_model("student"), objective, progress=False, device="cpu")
    with pytest.raises(TypeError, match="returned Tensor, not a dict of named loss terms"):
        trainer.fit(Loader(tiny_split, 32), 1)


def test_train_labels_out_of_range(tiny_split):
    bad = Split(tiny_split.x, tiny_split.y + 5, tiny_split.info, "shifted labels")
    trainer = Trainer(build_model("student"), progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"labels range over 5\.\.14 but the model has 10 classes"):
        trainer.fit(Loader(bad, 32), 1)


@pytest.mark.parametrize("loader_kwargs", [{"data_n": 0}, {"data_n": 10, "drop_last": True}])
def test_train_empty_training_data(tiny_split, loader_kwargs):
    data = Split(tiny_split.x[:loader_kwargs["data_n"]], tiny_split.y[:loader_kwargs["data_n"]], tiny_split.info, "e")
    trainer = Trainer(build_model("student"), progress=False, device="cpu")
    with pytest.raises(ValueError, match="gives no batch"):
        trainer.fit(Loader(data, 32, drop_last=loader_kwargs.get("drop_last", False)), 1)
    assert trainer.history.epochs == []


def test_train_zero_epochs_warns_and_logs_nothing(tiny_split, tmp_path):
    trainer = Trainer(build_model("student"), progress=False, device="cpu", checkpoint=tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="nothing to train"):
        history = trainer.fit(Loader(tiny_split, 32), 0)
    assert history.epochs == [] and not (tmp_path / "c.pt").exists()


def test_train_resume_from_another_models_checkpoint_names_the_file(tiny_split, tmp_path):
    ckpt = tmp_path / "run.pt"
    Trainer(build_model("teacher"), progress=False, device="cpu", checkpoint=ckpt).fit(Loader(tiny_split, 64), 1)
    with pytest.raises(ValueError, match=f"Cannot resume from {ckpt}: it was written for another model"):
        Trainer(build_model("student"), progress=False, device="cpu", checkpoint=ckpt).resume()
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        Trainer(build_model("teacher"), progress=False, device="cpu", checkpoint=ckpt).resume()


# -- zoo ----------------------------------------------------------------------------------------
def _zoo_with(tmp_path: Path, model: torch.nn.Module, payload: bytes | None = None) -> Path:
    path = tmp_path / "fashion-mnist" / "m.pt"
    sha = zoo.save_model(model, path)
    if payload is not None:
        path.write_bytes(payload)
        sha = hashlib.sha256(payload).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {"m": {"file": "fashion-mnist/m.pt",
                                                                          "sha256": sha, "dataset": "fashion-mnist"}}}))
    return path


def test_zoo_truncated_checkpoint_names_the_file(tmp_path):
    path = _zoo_with(tmp_path, build_model("student"))
    _zoo_with(tmp_path, build_model("student"), path.read_bytes()[:300])
    with pytest.raises(ValueError, match="m.pt cannot be read as a checkpoint") as err:
        zoo.load("m", tmp_path)
    assert "git checkout --" in str(err.value) and "do not delete it" in str(err.value)


def test_random_bytes_are_named_with_the_fix_for_each_kind_of_file(tmp_path):
    """A file of random bytes (not a pickle at all) is named with the repair that fits it: a zoo model is
    restored from git, a cache deleted, a checkpoint deleted to start afresh."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 250)) * 4)
    for kind, words in [("zoo", "git checkout --"), ("cache", "It is a cache: delete it"),
                        ("checkpoint", "to start that run afresh")]:
        with pytest.raises(ValueError, match="junk.pt cannot be read as a checkpoint") as err:
            zoo.load_file(junk, kind=kind)
        assert words in str(err.value)
    with pytest.raises(ValueError, match="junk.pt: it is not a readable checkpoint") as err:
        Trainer(build_model("student"), progress=False, device="cpu", checkpoint=junk).resume()
    assert "to start that run afresh" in str(err.value)


def test_zoo_wrong_architecture_names_the_file(tmp_path):
    student, teacher = build_model("student"), build_model("teacher")
    path = tmp_path / "x.pt"
    torch.save({"config": student.config(), "state_dict": teacher.state_dict()}, path)
    _zoo_with(tmp_path, student, path.read_bytes())
    with pytest.raises(ValueError, match="m.pt: its weights do not fit the architecture"):
        zoo.load("m", tmp_path)
    torch.save(student.state_dict(), path)  # a bare state_dict, not a zoo file
    _zoo_with(tmp_path, student, path.read_bytes())
    with pytest.raises(ValueError, match="is not a zoo model file"):
        zoo.load("m", tmp_path)


@pytest.mark.parametrize("text, words", [
    ("{not json", "is not valid JSON"),
    ("[]", "is malformed"),
    ('{"models": {"m": {"file": 3}}}', "is malformed"),
])
def test_zoo_malformed_manifest_names_the_file_and_the_fix(tmp_path, text, words):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=words) as err:
        zoo.read_manifest(tmp_path)
    assert "manifest.json" in str(err.value) and "git checkout" in str(err.value)


def test_zoo_unknown_dataset_is_rejected_before_any_folder_is_made(tmp_path):
    with pytest.raises(KeyError, match="Unknown dataset 'bogus'"):
        zoo.build(["student"], "bogus", zoo_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError, match="Unknown dataset 'bogus'"):
        zoo.models_for("bogus", tmp_path)


def test_zoo_evaluate_unknown_model_for_the_dataset(tmp_path):
    _zoo_with(tmp_path, build_model("student"))
    with pytest.raises(KeyError, match=r"No model\(s\) \['teacher'\] for fashion-mnist"):
        zoo.evaluate_zoo(["teacher"], "fashion-mnist", tmp_path)


# -- cli ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["zoo", "list", "--dataset", "bogus"], "Unknown dataset 'bogus'"),
    (["zoo", "build", "--dataset", "bogus", "--only", "student"], "Unknown dataset 'bogus'"),
    (["zoo", "evaluate", "--only", "nobody"], "No model(s) ['nobody']"),
])
def test_cli_bad_zoo_arguments_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert not (zoo.ZOO_DIR / "bogus").exists()


def test_cli_zoo_list_honours_the_dataset(capsys):
    assert main(["zoo", "list", "--dataset", "cifar10"]) == 0
    assert json.loads(capsys.readouterr().out) == {}


@pytest.mark.parametrize("argv", [["--debug", "zoo", "list", "--dataset", "bogus"],
                                  ["zoo", "list", "--dataset", "bogus", "--debug"]])
def test_cli_debug_shows_the_exception(argv):
    with pytest.raises(KeyError, match="Unknown dataset 'bogus'"):
        main(argv)


# -- nothing lost -------------------------------------------------------------------------------
def _snapshot() -> dict[str, str]:
    out = {}
    for top in ("data", "results"):
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(REPO_ROOT))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_failed_and_interrupted_runs_leave_data_and_results_byte_identical(tiny_split, tmp_path, capsys):
    before = _snapshot()

    def interrupted(model, x, y, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return {"ce": torch.nn.functional.cross_entropy(model(x), y)}

    def failing(model, x, y, epoch):
        raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="interrupted"):
        Trainer(build_model("student"), interrupted, progress=False, device="cpu",
                checkpoint=tmp_path / "i.pt").fit(Loader(tiny_split, 32), 3)
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(build_model("student"), failing, progress=False, device="cpu").fit(Loader(tiny_split, 32), 1)
    for argv in (["zoo", "build", "--dataset", "bogus"], ["zoo", "evaluate", "--only", "nobody"],
                 ["reproduce", "--seeds", "0"], ["reproduce", "--methods", "nope"], ["reproduce", "--workers", "0"]):
        assert main(argv) == 2
    with pytest.raises(KeyError):
        zoo.load("nobody")
    assert _snapshot() == before


def test_fisher_trace_rejects_labels_outside_the_models_classes():
    from indistill_lab.fisher import fisher_trace, fisher_trace_loop
    from indistill_lab.models import build_model

    model, x = build_model("student"), torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError, match="class indices in 0..9"):
        fisher_trace(model, x, labels=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="class indices in 0..9"):
        fisher_trace_loop(model, x, torch.tensor([-1, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        fisher_trace(model, x, labels=torch.zeros(4))


def test_an_input_shape_of_the_wrong_channels_is_named_before_tracing():
    with pytest.raises(ValueError, match=r"input_shape \(3, 28, 28\) has 3 channel\(s\) but the model's first conv "
                                         r"takes 1: give input_shape=\(1, H, W\)"):
        prune_to_widths(build_model("teacher"), [8, 16, 32], input_shape=(3, 28, 28))
    with pytest.raises(ValueError, match="input_shape must be \\(channels, height, width\\)"):
        prune_to_widths(build_model("teacher"), [8, 16, 32], input_shape=(28, 28))


def test_a_curriculum_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CurriculumError, match="c.json is not a UTF-8 text file"):
        Curriculum.from_json(path)


def test_zoo_build_of_a_missing_dataset_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_DATA", str(tmp_path / "nodata"))
    monkeypatch.setattr("torchvision.datasets.CIFAR10.__init__",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises((RuntimeError, FileNotFoundError, ValueError)):
        zoo.build(["teacher"], "cifar10", zoo_dir=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "cifar10").exists()


def test_a_cascade_level_given_alone_and_a_stage_given_as_a_string_are_understood():
    from indistill_lab.cascade import Cascade
    from indistill_lab.self_distillation import SelfDistillation

    with pytest.raises(ValueError, match=r"levels must be a list .* cascade_levels\(0.6, assistants=1\)"):
        Cascade(build_model("auxiliary"), 0.6)
    student = build_model("student")
    assert SelfDistillation(student, torch.randn(2, 1, 28, 28), stages="stage2").stages == ["stage2"]
