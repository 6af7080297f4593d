"""InDistill end to end: index-aware loader, feature cache, configurations, method curricula, and a
small full pipeline (artefacts, resumability, distillation pulls the student toward the teacher)."""
from __future__ import annotations

import pytest
import torch

from indistill_lab.taps import features
from indistill_lab.data import Loader, crop_flip
from indistill_lab.feature_cache import FeatureCache, IndexedLoader
from indistill_lab.experiments.reproduce import reproduce
from indistill_lab.experiments.tables import markdown_summary, mean_std, read_results
from indistill_lab.methods import Context, get_method
from indistill_lab.pipeline import RunConfig, build, prepare, prune_auxiliary
from indistill_lab.sources import KeptChannels, Sources
from indistill_lab.losses import FeatureMSE
from indistill_lab.train import Callback


def test_indexed_loader_matches_loader_and_reports_indices(tiny_split):
    plain = list(Loader(tiny_split, 10, seed=3))
    indexed = IndexedLoader(tiny_split, 10, seed=3)
    for (x, y), (xi, yi) in zip(plain, indexed):
        assert torch.equal(x, xi) and torch.equal(y, yi)
        assert torch.equal(tiny_split.x[indexed.indices], xi)
    assert len(list(indexed)) == len(plain) == 7 and indexed.indices is None  # cleared after the epoch


def test_epoch_size_caps_an_epoch_and_epochs_differ(tiny_split):
    loader = IndexedLoader(tiny_split, 10, seed=0, epoch_size=25)
    assert len(loader) == 3
    first = torch.cat([y for _, y in loader])
    assert len(first) == 25
    loader.set_epoch(1)
    seen = set()
    for _ in loader:
        seen |= set(loader.indices.tolist())
    assert len(seen) == 25
    with pytest.raises(ValueError, match="epoch_size"):
        IndexedLoader(tiny_split, 10, epoch_size=0)


def test_feature_cache_equals_direct_features_and_counts_misses(tiny_split):
    teacher = build(RunConfig(), "auxiliary").eval()
    sources = Sources(aux=teacher)
    loader = IndexedLoader(tiny_split, 16, seed=1)
    cache = FeatureCache(sources.features, loader)
    for x, _ in loader:
        got = cache(x, ["aux.stage2", "aux.act_fc1"])
        want = sources.features(x, ["aux.stage2", "aux.act_fc1"])
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
    assert (cache.hits, cache.misses) == (4, 0)
    assert cache.nbytes == 64 * (32 * 7 * 7 + 128) * 4
    cache(tiny_split.x[:5], ["aux.stage2"])  # not the loader's batch: computed, not looked up
    assert cache.misses == 1
    cache.retain(["aux.act_fc1"])
    assert list(cache.tables) == ["aux.act_fc1"]


def test_feature_cache_refuses_augmenting_loader(tiny_split):
    with pytest.raises(ValueError, match="augments"):
        FeatureCache(lambda x, p: {}, IndexedLoader(tiny_split, 8, transform=crop_flip()))
    with pytest.raises(TypeError, match="IndexedLoader"):
        FeatureCache(lambda x, p: {}, Loader(tiny_split, 8))


def test_sources_reject_unknown_model_prefix():
    sources = Sources(pruned=build(RunConfig(), "student"))
    with pytest.raises(KeyError, match="'<model>.<layer>'"):
        sources.features(torch.zeros(2, 1, 28, 28), ["teacher.stage1"])


def test_config_checks_and_presets():
    with pytest.raises(ValueError, match="optimizer_state"):
        RunConfig(optimizer_state="never")
    with pytest.raises(ValueError, match="lr_drop_epoch"):
        RunConfig(lr_drop_epoch=-1)
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        RunConfig(lr=-1e-3)
    with pytest.raises(ValueError, match="no epoch for the final term"):
        RunConfig(epochs=6, a=0)  # 1 + 2 + 3 intermediate epochs leave nothing
    with pytest.raises(ValueError, match="cache=False"):
        RunConfig(augment=True)
    paper = RunConfig.cifar10_paper()
    assert (paper.dataset, paper.teacher, paper.epochs, paper.a, paper.batch_size) == ("cifar10", "preact-resnet18", 70, 2, 128)
    assert paper.lr_schedule == {60: 1e-4} and paper.lr == 1e-3
    assert paper.augment and not paper.cache and paper.intermediate_epochs == 12
    teacher, aux = build(paper, "teacher"), build(paper, "auxiliary")
    assert type(teacher).__name__ == "PreActResNet18"
    assert sum(p.numel() for p in aux.parameters()) < 60_000  # the paper's ~58k auxiliary (padding 0)
    cpu = RunConfig()
    assert (cpu.epochs, cpu.epoch_size, cpu.a, cpu.lr_schedule) == (15, 12_000, 0, {13: 1e-4})
    assert cpu.optimizer_state == "epoch"  # the reference code's protocol is the default
    assert cpu.digest() != RunConfig(a=1).digest() != RunConfig(optimizer_state="run").digest()


def _sources(cfg: RunConfig) -> Sources:
    torch.manual_seed(0)
    aux = build(cfg, "auxiliary")
    from indistill_lab.pruning import prune_to_widths
    return Sources(teacher=build(cfg, "teacher"), aux=aux, pruned=prune_to_widths(aux, [8, 16, 32])[0])


def _curriculum(method: str, sources: Sources, student, cfg: RunConfig, train=None):
    return get_method(method).curriculum(student, Context(cfg, train, sources))


def test_method_curricula_follow_their_definitions(tiny_split):
    cfg = RunConfig(a=1, epochs=12)
    sources, student = _sources(cfg), build(cfg, "student")
    paper = _curriculum("indistill-paper", sources, student, cfg)
    assert [(p.teacher, p.student, p.start, p.epochs) for p in paper.phases] == [
        ("pruned.stage1", "stage1", 0, 2), ("pruned.stage2", "stage2", 2, 3), ("pruned.stage3", "stage3", 5, 4)]
    assert (paper.final.teacher, paper.final.loss, paper.final_begins) == ("aux.act_fc1", "pkt", 9)
    together = _curriculum("indistill-all-at-once", sources, student, cfg)
    assert {(p.start, p.epochs) for p in together.phases} == {(0, 9)}
    fitnets = _curriculum("fitnets", sources, student, cfg)
    assert {p.loss for p in fitnets.phases} == {"fitnets"} and fitnets.phases[0].teacher == "aux.stage1"
    kd = _curriculum("hinton-kd", sources, student, cfg)
    assert (kd.phases, kd.final.teacher, kd.final.loss, kd.final_begins) == ((), "teacher.classifier", "kd", 0)
    hard = _curriculum("indistill-difficulty", sources, student, cfg, tiny_split)
    assert sum(p.epochs for p in hard.phases) == 9 and all(p.epochs >= 1 for p in hard.phases)
    assert _curriculum("student-ce", sources, student, cfg) is None
    with pytest.raises(KeyError, match="Known"):
        get_method("indistill")
    warm = _curriculum("indistill-kd", sources, student, cfg)  # InDistill's phases, then Hinton KD
    assert [p.teacher for p in warm.phases] == [p.teacher for p in paper.phases]
    assert (warm.final.teacher, warm.final.student, warm.final.loss) == ("teacher.classifier", "classifier", "kd")
    assert get_method("indistill-kd").trains_head(warm) and not get_method("indistill-paper").trains_head(paper)


def test_kept_channels_are_the_unpruned_features_and_differ_from_the_pruned_network_deeper(tiny_split):
    cfg = RunConfig()
    aux = build(cfg, "auxiliary").eval().requires_grad_(False)  # frozen, as inside Sources
    pruned, report = prune_auxiliary(aux, cfg, tiny_split)
    assert pruned.widths == [8, 16, 32]
    kept = KeptChannels.from_report(aux, report)
    x = torch.randn(6, 1, 28, 28)
    full = features(aux, x, ["stage1", "stage2"])
    view = features(kept, x, ["stage1", "stage2"])
    coherent = features(pruned.eval(), x, ["stage1", "stage2"])
    idx2 = report.kept["stage2.conv1"]
    assert len(idx2) == 16 and torch.equal(view["stage2"], full["stage2"][:, idx2])
    torch.testing.assert_close(coherent["stage1"], view["stage1"])  # first stage: same inputs, same outputs
    assert not torch.allclose(coherent["stage2"], view["stage2"])  # deeper: the pruned inputs are missing
    c = _curriculum("indistill-kept-channels", Sources(aux=aux, kept=kept), build(cfg, "student"), cfg)
    assert [p.teacher for p in c.phases] == ["kept.stage1", "kept.stage2", "kept.stage3"]


def test_mean_std_and_table_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    row = dict(map_e=50.0, map_c=52.0, top100_e=60.0, top100_c=61.0, accuracy=80.0, wall_seconds=10.0)
    rows = [dict(row, method="student-ce", seed=0, accuracy_from="head"),
            dict(row, method="pkt", seed=0, accuracy_from="probe", map_e=55.0)]
    table = markdown_summary(rows)
    assert "| pkt | 1 | **55.00 ± 0.00** |" in table and "80.00 ± 0.00*" in table
    assert table.index("student-ce") < table.index("| pkt")  # registry order


TINY = dict(epochs=7, a=0, epoch_size=None, lr_drop_epoch=6, aux_epochs=1, teacher_epochs=1,
            train_size=512, test_size=200, use_zoo=False, batch_size=64)


def test_pipeline_end_to_end(tmp_path):
    cfg = RunConfig(**TINY, lr=3e-3)
    logs: list[str] = []
    rows = reproduce(cfg, seeds=[0], methods=["student-ce", "indistill-paper"], results_dir=tmp_path,
                     name="tiny", log=logs.append)
    assert {r["method"] for r in rows} == {"student-ce", "indistill-paper"}
    for r in rows:
        assert 0 <= r["map_e"] <= 100 and 0 <= r["top100_c"] <= 100 and r["config"] == cfg.digest()
    distilled = next(r for r in rows if r["method"] == "indistill-paper")
    assert distilled["accuracy_from"] == "probe" and distilled["accuracy"] > 20  # chance is 10
    assert distilled["phases"] == '[["stage1", 0, 1], ["stage2", 1, 2], ["stage3", 3, 3]]'
    assert (tmp_path / "tiny.png").stat().st_size > 1000
    assert "indistill-paper" in (tmp_path / "tiny.md").read_text()
    assert any("feature cache: 4 tables" in m for m in logs)  # pruned stage1-3 + auxiliary embedding
    again: list[str] = []
    reproduce(cfg, seeds=[0], methods=["student-ce", "indistill-paper"], results_dir=tmp_path, name="tiny",
              log=again.append)
    assert again == [f"config {cfg.digest()}: 2 runs already in {tmp_path / 'tiny.csv'}, 0 to do"]
    assert len(read_results(tmp_path / "tiny.csv")) == 2


def test_distillation_moves_student_toward_pruned_auxiliary():
    cfg = RunConfig(**{**TINY, "a": 2, "epochs": 13, "lr_drop_epoch": 13, "batch_size": 32}, lr=3e-3)
    prep = prepare(cfg, log=lambda m: None)
    x, paths = prep.test.x[:128], prep.pruned.stage_paths
    targets = features(prep.pruned, x, paths)

    def distance(student):
        s = features(student, x, paths)
        return [float(FeatureMSE()(s[p], targets[p])) for p in paths]

    class Track(Callback):  # the student's MSE to the pruned auxiliary at every layer, after every epoch
        def on_epoch_end(self, trainer, logs):
            seen.append(distance(trainer.model))

    torch.manual_seed(0)
    seen = [distance(build(cfg, "student"))]
    trained = get_method("indistill-paper").train(Context(cfg, prep.train, prep.sources), seed=0, callbacks=[Track()])
    curriculum = trained.curriculum
    for k, phase in enumerate(curriculum.phases):  # held-out MSE of layer k falls during its own phase
        assert seen[phase.end][k] < 0.8 * seen[phase.start][k], (k, seen)
    logged = trained.history.epochs
    assert "mse/stage1" in logged[0] and "mse/stage1" not in logged[3] and "pkt/act_fc1" in logged[12]


def test_target_gaps_measure_each_variant_against_the_unpruned_features(tiny_split):
    from indistill_lab.sources import ReferenceTargets, target_gaps

    cfg = RunConfig()
    aux = build(cfg, "auxiliary").eval().requires_grad_(False)
    pruned, report = prune_auxiliary(aux, cfg, tiny_split)
    sources = Sources(aux=aux, pruned=pruned, kept=KeptChannels.from_report(aux, report),
                      reference=ReferenceTargets.from_report(aux, report))
    rows = {(r["stage"], r["targets"]): r for r in target_gaps(sources, tiny_split.x, ["stage1", "stage2"])}
    assert set(rows) == {(s, v) for s in ("stage1", "stage2") for v in ("pruned", "reference")}  # no 'tuned' here
    assert rows["stage1", "pruned"]["relative_mse"] == 0.0 and rows["stage1", "pruned"]["cka"] == pytest.approx(1.0)
    assert rows["stage2", "pruned"]["relative_mse"] > 0.01  # deeper: computed without the removed inputs
    assert rows["stage1", "reference"]["cka"] < 1.0  # batch-standardised, beta 0: not the running-stat features


def test_worker_processes_give_the_rows_of_a_sequential_run(tmp_path):
    """Each run seeds itself and a worker uses one thread: two workers write the same numbers as one
    in-process run on one thread (only the timing columns differ)."""
    cfg = RunConfig(**{**TINY, "epochs": 7}, lr=3e-3)
    methods = ["student-ce", "pkt"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = reproduce(cfg, seeds=[0, 1], methods=methods, results_dir=tmp_path / "seq", name="t",
                               log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    logs: list[str] = []
    parallel = reproduce(cfg, seeds=[0, 1], methods=methods, results_dir=tmp_path / "par", name="t", workers=2,
                         log=logs.append)
    timing = {"train_seconds", "eval_seconds", "wall_seconds"}
    key = lambda r: (r["method"], r["seed"])  # noqa: E731
    strip = lambda rows: sorted(({k: v for k, v in r.items() if k not in timing} for r in rows), key=key)  # noqa: E731
    assert strip(parallel) == strip(sequential) and len(parallel) == 4
    assert any(m.startswith("projection: 4 runs x 7 epochs") for m in logs)
    with pytest.raises(ValueError, match="seeds is empty"):
        reproduce(cfg, seeds=[], results_dir=tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        reproduce(cfg, seeds=[0], workers=0, results_dir=tmp_path, log=lambda m: None)


def test_measured_projection_costs_each_run_at_its_methods_mean_wall_time():
    from indistill_lab.experiments.reproduce import measured_projection
    rows = [{"method": "pkt", "seed": 0, "wall_seconds": 1000.0}, {"method": "pkt", "seed": 1, "wall_seconds": 1400.0},
            {"method": "student-ce", "seed": 0, "wall_seconds": 600.0}]
    # pkt: 1200 s; student-ce: 600 s; fitnets (not run yet): the mean of all rows, 1000 s; two workers.
    text = measured_projection(rows, [("pkt", 2), ("student-ce", 1), ("fitnets", 0)], workers=2)
    assert text.endswith(f"= {(1200 + 600 + 1000) / 2 / 3600:.2f} h") and "3 finished run(s)" in text
    assert measured_projection(rows, [("pkt", 2)], workers=4).endswith(f"/ 1 worker(s) = {1200 / 3600:.2f} h")
    assert measured_projection([], [("pkt", 0)], workers=1) == ""
