"""The model adapter: kit models describe themselves, torchvision models get a proposed description, and a
torchvision ResNet pair goes through spec -> stage pairs -> pruned targets -> evaluation like the presets."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, vgg11

from indistill_lab.adapter import ModelSpec, SpecError, propose_spec, spec_of, with_spec
from indistill_lab.alignment import validate, LayerMap
from indistill_lab.curriculum import embedding_term, stage_pairs
from indistill_lab.data import DatasetInfo, Split
from indistill_lab.evaluation import evaluate_student
from indistill_lab.metrics import embeddings, evaluate_retrieval, retrieval_metrics
from indistill_lab.models import build_model, model_input_shape
from indistill_lab.pruning import prune_to_widths
from indistill_lab.sources import KeptChannels
from indistill_lab.taps import features

torch.set_num_threads(1)
SHAPE = (3, 32, 32)
RESNET_SPEC = ModelSpec(("layer1", "layer2", "layer3", "layer4"), "avgpool", "fc", SHAPE)


def test_kit_models_describe_themselves_and_the_proposal_agrees() -> None:
    for name in ("teacher", "auxiliary", "student"):
        model = build_model(name)
        spec = spec_of(model)
        assert spec.stages == tuple(model.stage_paths) and spec.embedding == model.embedding_path
        assert spec.classifier == "classifier" and spec.input_shape == (1, 28, 28)
        assert propose_spec(model) == spec  # found from the structure alone, by one probe pass


def test_propose_spec_for_torchvision_resnet_and_vgg() -> None:
    assert propose_spec(resnet18(num_classes=10), SHAPE) == RESNET_SPEC
    with torch.device("meta"):  # shapes only: VGG's 100M-parameter head is never allocated
        model = vgg11(num_classes=10)
    vgg = propose_spec(model, (3, 64, 64))
    # VGG-11's five blocks end at its max-pools; the embedding feeds the last Linear (classifier.6).
    assert vgg.stages == ("features.2", "features.5", "features.10", "features.15", "features.20")
    assert (vgg.embedding, vgg.classifier) == ("classifier.5", "classifier.6")


def test_a_model_without_description_says_what_to_attach() -> None:
    with pytest.raises(SpecError, match=r"with_spec.*propose_spec\(model\) gives ModelSpec\(stages=\('layer1'"):
        spec_of(resnet18(num_classes=10))


def test_unknown_paths_are_named_with_close_candidates() -> None:
    bad = ModelSpec(("layer1", "layr2"), "avgpol", "fc", SHAPE)
    with pytest.raises(SpecError) as info:
        with_spec(resnet18(num_classes=10), bad)
    message = str(info.value)
    assert "stage 'layr2'" in message and "did you mean 'layer2'" in message
    assert "embedding 'avgpol'" in message and "'avgpool'" in message
    assert "'layer1'" not in message.split("\n")[1]  # valid paths are not reported
    with pytest.raises(SpecError, match="classifier 'layer4' is a Sequential, not an nn.Linear.*Linear layers: fc"):
        with_spec(resnet18(num_classes=10), ModelSpec(("layer1",), "avgpool", "layer4", SHAPE))


def _synthetic(n_per_class: int, seed: int, classes: int = 4) -> Split:
    """Images = a fixed per-class pattern + noise: separable classes, so retrieval scores well above chance."""
    prototypes = torch.randn(classes, *SHAPE, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = prototypes[y] + 0.3 * torch.randn(len(y), *SHAPE, generator=g)
    info = DatasetInfo("synthetic", 3, 32, classes, tuple(map(str, range(classes))), (0.0,) * 3, (1.0,) * 3)
    return Split(x, y, info, f"synthetic/{seed}")


def test_torchvision_pair_through_spec_stage_pairs_targets_and_evaluation() -> None:
    torch.manual_seed(0)
    teacher = with_spec(resnet18(num_classes=4), RESNET_SPEC)
    widths = [16, 32, 64, 128]
    # The auxiliary's role: the teacher pruned to the student's widths; the student: another ResNet-18 at them.
    pruned, report = prune_to_widths(teacher, widths)
    student, _ = prune_to_widths(with_spec(resnet18(num_classes=4), RESNET_SPEC), widths)
    assert spec_of(pruned) == spec_of(student) == RESNET_SPEC  # the description survives pruning (a copy)
    assert model_input_shape(student) == SHAPE

    pairs = stage_pairs(pruned, student)
    assert pairs == [(f"layer{k}", f"layer{k}") for k in range(1, 5)]
    assert len(validate(pruned, student, LayerMap.from_pairs(pairs), SHAPE)) == 4  # same shapes at every stage
    assert embedding_term(teacher, student).teacher == "avgpool"

    # KeptChannels reads the unpruned teacher's stage outputs at the channels pruning kept.
    kept = KeptChannels.from_report(teacher, report)
    x = torch.randn(4, *SHAPE)
    got = features(kept, x, [p for p, _ in pairs])
    full = features(teacher, x, [p for p, _ in pairs])
    for k, width in enumerate(widths, start=1):
        path = f"layer{k}"
        assert got[path].shape[1] == width
        assert torch.equal(got[path], full[path][:, report.kept[f"{path}.1.conv2"]])

    train, test = _synthetic(30, seed=1), _synthetic(10, seed=2)
    emb = embeddings(student, test.x, device="cpu")
    assert emb.shape == (len(test), 128)  # layer4's width after the pooled embedding
    with torch.no_grad():
        student.eval()
        h = student.maxpool(student.relu(student.bn1(student.conv1(test.x))))
        for k in range(1, 5):
            h = getattr(student, f"layer{k}")(h)
        by_hand = torch.flatten(student.avgpool(h), 1)
    assert torch.allclose(emb, by_hand, atol=1e-5)
    got = evaluate_retrieval(student, test, train, top_k=10, device="cpu")
    want = retrieval_metrics(emb, test.y, embeddings(student, train.x, device="cpu"), train.y, top_k=10)
    assert got["euclidean"] == pytest.approx(want)

    probed = evaluate_student(copy.deepcopy(student), train, test, trained_head=False)
    # Separable synthetic classes: a linear probe on even an untrained ResNet's features nearly always wins.
    assert probed["accuracy_from"] == "probe" and probed["accuracy"] >= 90.0
    assert probed["map_e"] > 50.0  # four classes: chance mAP is about 25%


def _resnet_pair():
    """A torchvision ResNet-18 teacher (16x16 inputs), an auxiliary (ResNet-18 at half width) that the pipeline
    trains with PKT and prunes to the student's widths, and ResNet-18 students at those widths, on synthetic data:
    (configuration, the prepared stages, a function returning a fresh student)."""
    from indistill_lab import RunConfig, prepare_models

    shape = (3, 16, 16)
    spec = ModelSpec(("layer1", "layer2", "layer3", "layer4"), "avgpool", "fc", shape)
    torch.manual_seed(0)
    teacher = with_spec(resnet18(num_classes=4), spec).eval()
    auxiliary, _ = prune_to_widths(with_spec(resnet18(num_classes=4), spec), [16, 32, 64, 128])
    template, _ = prune_to_widths(with_spec(resnet18(num_classes=4), spec), [8, 16, 32, 64])

    def student() -> nn.Module:
        """A fresh random init (from the method's seed) of the pruned ResNet-18, without re-tracing the pruning."""
        model = copy.deepcopy(template)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return model

    def data(n: int, seed: int) -> Split:
        split = _synthetic(n, seed)
        return Split(split.x[:, :, :16, :16].contiguous(), split.y, split.info, split.name)

    # 4 stages: the paper's phases take 1 + 2 + 3 + 4 = 10 epochs (a = 0), then one epoch of the final term.
    cfg = RunConfig(epochs=11, epoch_size=32, batch_size=16, a=0, lr_drop_epoch=11, aux_epochs=1, use_zoo=False)
    train, test = data(16, seed=1), data(8, seed=2)
    prep = prepare_models(cfg, train, test, teacher, auxiliary, template, log=lambda _: None)
    assert set(prep.sources._modules) == {"teacher", "aux", "pruned", "kept", "tuned"}  # no 'reference': not a kit ConvNet
    assert [prep.pruned.get_submodule(f"layer{k}")[1].conv2.out_channels for k in range(1, 5)] == [8, 16, 32, 64]
    assert prep.aux is not auxiliary and not torch.equal(prep.aux.layer1[0].conv1.weight, auxiliary.layer1[0].conv1.weight)
    return cfg, prep, student


def _resnet_pair_context():
    """The pair's training context (students of the user's) and its test split."""
    from indistill_lab import Context

    cfg, prep, student = _resnet_pair()
    return Context(cfg, prep.train, prep.sources, student=student), prep.test


CURRICULUM_METHODS = ["student-ce", "hinton-kd", "pkt", "fitnets", "indistill-all-at-once", "indistill-paper",
                      "indistill-difficulty", "indistill-kept-channels", "indistill-finetuned", "indistill-kd"]


def test_the_kits_distillation_methods_run_on_a_torchvision_pair_through_the_public_entry_point() -> None:
    from indistill_lab import evaluate_student, get_method

    ctx, test = _resnet_pair_context()
    for name in CURRICULUM_METHODS:
        trained = get_method(name).train(ctx, seed=0)
        student = trained.student
        assert isinstance(student, type(resnet18())) and student.layer1[0].conv1.out_channels == 8, name
        assert len(trained.history.epochs) == ctx.cfg.epochs and trained.history.stopped is None, name
        if trained.curriculum is not None:
            used = {t.student for t in trained.curriculum.terms()}
            assert used <= {"layer1", "layer2", "layer3", "layer4", "avgpool", "fc"}, (name, used)
            last = trained.history.epochs[-1]
            assert all(k.split("/")[1] in used for k in last if "/" in k), (name, last)
        # KD and CE train the ResNet's own head ('fc'); the others are scored through a probe on 'avgpool'
        assert trained.trains_head == (name in ("student-ce", "hinton-kd", "indistill-kd")), name
        scores = evaluate_student(student, ctx.train, test, trained_head=trained.trains_head)
        assert 0.0 <= scores["accuracy"] <= 100.0 and scores["map_e"] > 0.0, (name, scores)
    with pytest.raises(ValueError, match="indistill-reference needs the reference code's targets.*kept-channels"):
        get_method("indistill-reference").train(ctx, seed=0)


def test_indistill_paper_on_the_pair_distils_each_stage_in_turn() -> None:
    """The mechanism on a torchvision pair: stage k's MSE is logged only in its a + k epochs, shallow first."""
    from indistill_lab import get_method

    ctx, _ = _resnet_pair_context()
    trained = get_method("indistill-paper").train(ctx, seed=0)
    active = [sorted(k for k in e if "/" in k) for e in trained.history.epochs]
    assert active == ([["mse/layer1"]] * 1 + [["mse/layer2"]] * 2 + [["mse/layer3"]] * 3 + [["mse/layer4"]] * 4
                      + [["pkt/avgpool"]])
    assert trained.curriculum.critical_end == 10


def test_the_self_distillation_methods_train_a_torchvision_student_and_export_its_backbone() -> None:
    from indistill_lab import evaluate_student, get_method

    ctx, test = _resnet_pair_context()
    for name in ("self-drg", "self-dsr", "self-drg-dsr"):
        trained = get_method(name).train(ctx, seed=0)
        student, objective = trained.student, trained.extras["objective"]
        assert isinstance(student, type(resnet18())) and student.layer1[0].conv1.out_channels == 8, name
        assert list(student.state_dict()) == list(ctx.new_student().state_dict()), name  # no head inside
        assert objective.stages == ([] if name == "self-dsr" else ["layer1"]), name  # the deepest map >= 4x4
        last = trained.history.epochs[-1]
        assert ("dsr" in last) == (name != "self-drg") and ("drg" in last) == (name != "self-dsr"), (name, last)
        scores = evaluate_student(student, ctx.train, test, trained_head=trained.trains_head)
        assert trained.trains_head and 0.0 <= scores["accuracy"] <= 100.0, (name, scores)


def test_the_cascade_methods_prune_the_users_auxiliary_to_the_users_student_budget() -> None:
    """On a ResNet pair the cascade masks the block-internal convs (the ones no residual addition ties), learns
    the student's share of them from the user's auxiliary, and returns that auxiliary physically pruned."""
    from indistill_lab import evaluate_student, get_method

    ctx, test = _resnet_pair_context()
    aux = ctx.sources.aux
    internal = [f"layer{k}.{b}.conv1" for k in range(1, 5) for b in (0, 1)]
    budget = sum(ctx.new_student().get_submodule(p).out_channels for p in internal)  # 2 * (8 + 16 + 32 + 64)
    for name, models in (("cascade-ta", 3), ("cascade-no-ta", 2)):
        trained = get_method(name).train(ctx, seed=0)
        student, report = trained.student, trained.extras["report"]
        assert trained.extras["level"] == pytest.approx(0.5), name
        assert isinstance(student, type(resnet18())) and len(trained.history.epochs) == ctx.cfg.epochs, name
        # the masked convs hold exactly the user's student's filter count, spread as the masks learned
        assert sum(student.get_submodule(p).out_channels for p in internal) == budget, name
        # convs tied through residual additions keep the auxiliary's widths (16, 32, 64, 128)
        assert [student.get_submodule(f"layer{k}.1.conv2").out_channels for k in range(1, 5)] == [16, 32, 64, 128]
        assert report.params_after < report.params_before == sum(p.numel() for p in aux.parameters()), name
        assert len(trained.history.epochs[0]) and sum(k.startswith("L") for k in trained.history.epochs[0]) == models
        scores = evaluate_student(student, ctx.train, test, trained_head=trained.trains_head)
        assert trained.trains_head and 0.0 <= scores["accuracy"] <= 100.0 and scores["map_e"] > 0.0, (name, scores)


def test_the_cascade_says_what_a_users_student_lacks() -> None:
    from indistill_lab import Context, RunConfig, get_method
    from indistill_lab.sources import Sources

    ctx, _ = _resnet_pair_context()
    other = Context(RunConfig(use_zoo=False), ctx.train, Sources(aux=ctx.sources.aux), student=lambda: vgg11())
    with pytest.raises(ValueError, match=r"cascade-ta: The cascade prunes ResNet's maskable convs .* has no conv at"):
        get_method("cascade-ta").train(other)
    wide = Context(RunConfig(use_zoo=False), ctx.train, Sources(aux=ctx.sources.aux),
                   student=lambda: copy.deepcopy(ctx.sources.aux))
    with pytest.raises(ValueError, match=r"keeps 480 of the 480 filters .* fewer filters there"):
        get_method("cascade-no-ta").train(wide)


def test_a_method_with_its_own_loop_must_say_it_trains_the_users_student() -> None:
    """A method that overrides `train` without `own_student = True` might train the preset: it refuses a
    student of the user's rather than silently training another model."""
    from indistill_lab import Context, Method, RunConfig

    class PresetLoop(Method):
        name, description = "preset-loop", "a loop that builds the configuration's student"

        def train(self, ctx, seed=0, **_):
            return "trained the preset"

    class OwnLoop(PresetLoop):
        own_student = True

        def train(self, ctx, seed=0, **_):
            return ctx.new_student()

    ctx = Context(RunConfig(), _synthetic(2, seed=0), student=lambda: resnet18(num_classes=4))
    with pytest.raises(ValueError, match=r"preset-loop trains the configuration's preset student.*Context.student"):
        PresetLoop().train(ctx)
    assert PresetLoop().train(Context(RunConfig(), _synthetic(2, seed=0))) == "trained the preset"
    assert isinstance(OwnLoop().train(ctx), type(resnet18()))


def test_an_embedding_that_does_not_feed_the_classifier_is_refused() -> None:
    with pytest.raises(SpecError, match=r"embedding 'layer3' gives 1024 features per input but classifier 'fc' "
                                        r"takes 512.*'avgpool'"):
        with_spec(resnet18(num_classes=4), ModelSpec(("layer1",), "layer3", "fc", (3, 32, 32)))
    with pytest.raises(SpecError, match=r"probe input of shape \(1, 32, 32\) does not run through ResNet"):
        with_spec(resnet18(num_classes=4), ModelSpec(("layer1",), "avgpool", "fc", (1, 32, 32)))


def _blocks_net() -> nn.Module:
    """A model of the user's own: stages are 'blocks.0' and 'blocks.1', no stageN/layerN names."""
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential()
    model.add_module("blocks", nn.Sequential(block(1, 8), block(8, 16)))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(16, 3))
    return model


def test_per_stage_widths_follow_the_description_of_a_users_model() -> None:
    model = with_spec(_blocks_net(), ModelSpec(("blocks.0", "blocks.1"), "flat", "head", (1, 12, 12)))
    assert propose_spec(model) == ModelSpec(("blocks.0.3", "blocks.1.3"), "flat", "head", (1, 224, 224))
    pruned, report = prune_to_widths(model, [4, 6])
    assert (pruned.blocks[0][0].out_channels, pruned.blocks[1][0].out_channels, pruned.head.in_features) == (4, 6, 6)
    assert spec_of(pruned).stages == ("blocks.0", "blocks.1")
    pooled = with_spec(_blocks_net(), ModelSpec(("blocks.0.3", "blocks.1.3"), "flat", "head", (1, 12, 12)))
    with pytest.raises(ValueError, match=r"Stage 'blocks.0.3' of Sequential holds no prunable conv.*dict"):
        prune_to_widths(pooled, [4, 6])


def test_compare_methods_tables_a_users_pair_resumes_and_starts_a_new_table_when_the_models_change(tmp_path) -> None:
    from indistill_lab import compare_methods

    cfg, prep, student = _resnet_pair()
    logs: list[str] = []
    rows = compare_methods(prep, student, cfg, ["student-ce", "pkt"], seeds=[0], name="pair", folder=tmp_path,
                           log=logs.append)
    (csv,) = tmp_path.glob("pair-*.csv")
    assert sorted(r["method"] for r in rows) == ["pkt", "student-ce"] and all(r["seed"] == 0 for r in rows)
    assert {r["config"] for r in rows} == {csv.stem.split("-", 1)[1]} != {cfg.digest()}  # models in the digest
    assert csv.with_suffix(".md").read_text().count("| pkt |") == 1 and csv.with_suffix(".png").stat().st_size > 1000
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["map_e"] > 0.0 for r in rows)

    again = compare_methods(prep, student, cfg, ["pkt", "student-ce"], seeds=[0], name="pair", folder=tmp_path,
                            log=logs.append)
    assert "0 of 2 runs to do" in logs[-1] and sorted(map(str, again)) == sorted(map(str, rows))  # resumed, not rerun

    compare_methods(prep, student, cfg, ["pkt"], seeds=[0], name="pair", folder=tmp_path, force=True, log=logs.append)
    assert len(csv.with_name(csv.name + ".replaced").read_text().splitlines()) == 1  # the old pkt row, kept
    assert len(csv.read_text().splitlines()) == 3

    with torch.no_grad():
        prep.teacher.fc.bias.add_(1.0)  # another teacher: another table, the first one untouched
    before = csv.read_bytes()
    compare_methods(prep, student, cfg, ["student-ce"], seeds=[0], name="pair", folder=tmp_path, log=logs.append)
    assert len(list(tmp_path.glob("pair-*.csv"))) == 2 and csv.read_bytes() == before
