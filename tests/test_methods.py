"""The method registry and the protocol pieces every method shares: one entry point trains any
registered method; the optimizer-state policy; the reference code's targets; variants never
write into the committed zoo."""
from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch
from torch import nn

from indistill_lab import pipeline, zoo
from indistill_lab.curriculum import Curriculum, Term
from indistill_lab.taps import features
from indistill_lab.objective import CurriculumObjective
from indistill_lab.data import Loader
from indistill_lab.methods import Context, Method, get_method, method_names, register
from indistill_lab.pipeline import RunConfig, build, prepare
from indistill_lab.pruning import prune_to_widths
from indistill_lab.sources import ReferenceTargets
from indistill_lab.train import Callback, Trainer, resets_optimizer

TINY = dict(epochs=7, a=0, epoch_size=64, lr_drop_epoch=6, aux_epochs=1, teacher_epochs=1, finetune_epochs=1,
            train_size=128, test_size=64, use_zoo=False, batch_size=32)


@pytest.fixture(scope="module")
def tiny_prep():
    """The shared stages at toy size (no zoo, a 1-epoch teacher): enough to run every method one step."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INDISTILL_QUICK", "1")
        cfg = RunConfig(**TINY)
        return cfg, prepare(cfg, log=lambda m: None)


def test_registry_lists_methods_and_unknown_names_list_the_known_ones():
    names = method_names()
    assert names[:4] == ["student-ce", "hinton-kd", "pkt", "fitnets"]  # baselines first
    for name in ("indistill-paper", "indistill-reference", "indistill-finetuned", "indistill-kd"):
        assert name in names
    assert all(get_method(n).description for n in names)
    with pytest.raises(KeyError, match="Known: student-ce, hinton-kd"):
        get_method("indistil-paper")


def test_registering_a_nameless_or_duplicate_method_fails():
    class Nameless(Method):
        description = "no name"
    with pytest.raises(ValueError, match="needs a `name`"):
        register(Nameless)

    class Twin(Method):
        name, description = "pkt", "a second 'pkt'"
    with pytest.raises(ValueError, match="Two methods are named 'pkt'"):
        register(Twin)


class _Stop(Callback):
    """Stops training after the first step (Ctrl-C semantics), so each method costs one batch."""

    def __init__(self) -> None:
        self.steps = 0

    def on_batch_end(self, trainer, logs):
        self.steps += 1
        self.logs = logs
        raise KeyboardInterrupt


@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_one_step_through_the_same_entry_point(name, tiny_prep):
    cfg, prep = tiny_prep
    stop = _Stop()
    method = get_method(name)
    with pytest.raises(RuntimeError, match="training stopped"), pytest.warns(UserWarning, match="stopped"):
        method.train(Context(cfg, prep.train, prep.sources), seed=0, callbacks=[stop])
    assert stop.steps == 1 and all(torch.isfinite(torch.tensor(v)) for v in stop.logs.values())


def _two_phase_objective(student: nn.Module, teacher: nn.Module) -> CurriculumObjective:
    c = Curriculum.sequential([("stage1", "stage1")], [2], Term("act_fc1", "act_fc1", "pkt"), total_epochs=4)
    return CurriculumObjective(c, teacher, student)


class _StateAtFirstStep(Callback):
    """Records, at the first step of each epoch, how many steps Adam had taken before it."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self._epoch = -1

    def on_batch_end(self, trainer, logs):
        if trainer.epoch != self._epoch:
            self._epoch = trainer.epoch
            state = next(iter(trainer.optimizer.state.values()))
            self.steps.append(int(state["step"]))


@pytest.mark.parametrize("policy, expected", [("run", [1, 5, 9, 13]), ("phase", [1, 5, 1, 5]),
                                              ("epoch", [1, 1, 1, 1])])
def test_optimizer_state_policy_is_honoured(policy, expected, tiny_split):
    """4 batches per epoch; the curriculum switches from MSE to PKT at epoch 2. Adam's step count at the
    first step of each epoch shows whether its state was kept (run), cleared at the switch, or every epoch."""
    torch.manual_seed(0)
    teacher, student = build_model_pair()
    record = _StateAtFirstStep()
    Trainer(student, _two_phase_objective(student, teacher), optimizer_state=policy, callbacks=[record],
            progress=False, device="cpu").fit(Loader(tiny_split, 16, seed=0), 4)
    assert record.steps == expected


def build_model_pair() -> tuple[nn.Module, nn.Module]:
    cfg = RunConfig()
    return build(cfg, "student").eval(), build(cfg, "student")


def test_policy_names_are_checked():
    assert resets_optimizer("phase", 2, [2]) and not resets_optimizer("phase", 3, [2])
    assert not resets_optimizer("epoch", 0) and resets_optimizer("epoch", 5)
    with pytest.raises(ValueError, match="run, phase, epoch"):
        Trainer(nn.Linear(2, 2), optimizer_state="never")


def test_reference_targets_equal_an_isolated_pruned_conv_with_batch_statistics_bn():
    torch.manual_seed(0)
    aux = build(RunConfig(), "auxiliary")
    for m in aux.modules():  # non-trivial BN parameters, so beta=0 and kept gammas are visible
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    aux.eval().requires_grad_(False)
    _, report = prune_to_widths(aux, [8, 16, 32])
    ref = ReferenceTargets.from_report(aux, report).eval()  # eval mode must not switch BN to running stats
    x = torch.randn(16, 1, 28, 28)
    got = features(ref, x, ["stage2"])["stage2"]
    keep = torch.as_tensor(report.kept["stage2.conv1"])
    conv = aux.stage2.conv1
    inp = aux.stage1(x)  # the UNPRUNED previous stage
    z = nn.functional.conv2d(inp, conv.weight[keep], conv.bias[keep], padding=conv.padding)
    mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (z - mean) / torch.sqrt(var + aux.stage2.bn1.eps) * aux.stage2.bn1.weight[keep].view(1, -1, 1, 1)
    want = nn.functional.max_pool2d(torch.relu(z), 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    per_channel = got.mean((0, 2, 3))
    assert got.shape == (16, 16, 7, 7) and per_channel.min() >= 0
    with pytest.raises(ValueError, match="convs per stage"):
        ReferenceTargets(build(RunConfig(), "teacher"), {"stage1": [0, 1]})


def test_variant_runs_never_touch_the_zoo(tmp_path, monkeypatch, tiny_split):
    """A non-default recipe trains its PKT auxiliary into the cache folder; data/zoo stays byte-identical."""
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in zoo.ZOO_DIR.rglob("*") if p.is_file()}
    monkeypatch.setenv("INDISTILL_OUT", str(tmp_path))
    cfg = RunConfig(**{**TINY, "use_zoo": True, "aux_epochs": 1, "epoch_size": 32, "aux_epoch_size": 32})
    teacher = zoo.load("teacher")
    aux = pipeline.auxiliary_pkt(teacher, cfg, tiny_split)
    cached = list((tmp_path / "cache").glob("auxiliary-pkt-*.pt"))
    assert len(cached) == 1
    # loaded from the cache, not retrained, also for students of another epoch size (the recipe is the aux's own)
    again = pipeline.auxiliary_pkt(teacher, RunConfig(**{**TINY, "use_zoo": True, "aux_epochs": 1, "epoch_size": 16,
                                                          "aux_epoch_size": 32}), tiny_split)
    assert len(list((tmp_path / "cache").glob("auxiliary-pkt-*.pt"))) == 1
    assert all(torch.equal(a, b) for a, b in zip(aux.state_dict().values(), again.state_dict().values()))
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in zoo.ZOO_DIR.rglob("*") if p.is_file()}
    assert after == before


def test_the_aux_epoch_size_keeps_old_digests_and_short_runs_skip_the_target_cache(tiny_prep):
    """A configuration whose auxiliary epoch size is the default or equals its students' has the digest it had
    before the field existed (committed tables resume); one run that sees fewer examples than the training set computes its
    targets batch by batch instead of caching the whole set."""
    from dataclasses import replace

    from indistill_lab.experiments.runs import shared_cache

    assert RunConfig().digest(quick=False) == "e8b49b4d4a" and RunConfig.paper().digest(quick=False) == "cf5a919776"
    from indistill_lab.experiments.warmup_onset import config

    assert config().digest(quick=False) == "f4c812c4a6"  # results/warmup-onset.csv
    assert RunConfig(aux_epoch_size=512).digest() != RunConfig().digest()
    cfg, prep = tiny_prep
    n = len(prep.train)
    assert shared_cache(prep, replace(cfg, epochs=7, epoch_size=n // 8, lr_drop_epoch=6), ["indistill-paper"]) is None
    assert shared_cache(prep, replace(cfg, epochs=7, epoch_size=None, lr_drop_epoch=6), ["indistill-paper"]) is not None


def test_every_committed_table_keeps_its_config_digest():
    """The `config` column of every committed results CSV made by a RunConfig: new fields (aux_epoch_size,
    full_eval, eval_size) at their defaults leave these digests as they were, so the tables still resume."""
    from indistill_lab.experiments.self_distillation import REGIMES
    from indistill_lab.experiments.warmup_onset import config, with_recovery

    committed = {  # digest: configuration (results/<file>.csv)
        "e8b49b4d4a": RunConfig(),  # fashion-mnist.csv
        "cf5a919776": RunConfig.paper(),  # fashion-mnist-cf5a919776.csv
        "4cb1d8aca6": RunConfig(optimizer_state="run"),  # fashion-mnist-4cb1d8aca6.csv
        "28ed7b0b5a": RunConfig(optimizer_state="phase"),  # fashion-mnist-28ed7b0b5a.csv
        "f4c812c4a6": config(),  # warmup-onset.csv
        "28fcb70ab7": with_recovery(config(), 3),
        "8ebedad51e": with_recovery(config(), 6),
        "786c9f398e": REGIMES["budget"].config("student", quick=False),  # self-distillation.csv
        "0b27d77686": REGIMES["budget"].config("auxiliary", quick=False),
    }
    assert {d: c.digest(quick=False) for d, c in committed.items()} == {d: d for d in committed}
    assert all(c.evaluation_size(60_000) is None for c in committed.values())  # all scored on the full protocol


def test_a_short_run_is_scored_on_a_subset_unless_the_full_protocol_is_asked_for(tiny_split):
    """The benchmark's 28-step run (7 x 512 of 60,000 images) is short: scored against eval_size (10,000)
    training images, and its digest differs from the full protocol's, which --full-eval restores; a run that
    sees a whole pass stays full unless full_eval=False. The subset is class-balanced."""
    from indistill_lab.pipeline import eval_train_split, short_run

    short = RunConfig(epochs=7, epoch_size=512, lr_drop_epoch=13)
    assert short_run(7, 512, 60_000) and not short_run(7, 512, 3_584) and not short_run(1, None, 60_000)
    assert short.evaluation_size(60_000) == 10_000 and short.evaluation_size(8_000) is None
    full = replace(short, full_eval=True)
    assert full.evaluation_size(60_000) is None
    assert full.digest(quick=False) == "fc0058f103"  # the digest this configuration had before the fields
    other = replace(short, eval_size=5_000)
    assert short.digest(quick=False) not in {full.digest(quick=False), other.digest(quick=False)}
    assert RunConfig().evaluation_size(60_000) is None
    assert replace(RunConfig(), full_eval=False).evaluation_size(60_000) == 10_000
    assert replace(RunConfig(), full_eval=False).digest(quick=False) != "e8b49b4d4a"
    assert replace(RunConfig(), eval_size=5_000).digest(quick=False) == "e8b49b4d4a"  # still the full protocol
    db = eval_train_split(RunConfig(epochs=7, epoch_size=2, lr_drop_epoch=6, eval_size=20), tiny_split)
    assert len(db) == 20 and torch.bincount(db.y, minlength=10).tolist() == [2] * 10
    long_cfg = RunConfig(epochs=7, epoch_size=None, lr_drop_epoch=6, eval_size=20)
    assert eval_train_split(long_cfg, tiny_split) is tiny_split
    with pytest.raises(ValueError, match="eval_size"):
        RunConfig(eval_size=0)


def test_a_short_run_computes_its_targets_per_batch_and_a_long_one_caches_them_to_the_same_values(tiny_prep):
    """`pipeline.targets` follows the rule of `runs.shared_cache` (`short_run`): 7 epochs of an eighth of the
    set compute the teacher's targets batch by batch, a full pass builds a FeatureCache; same values."""
    from indistill_lab.feature_cache import FeatureCache
    from indistill_lab.pipeline import make_loader, targets

    cfg, prep = tiny_prep
    n = len(prep.train)
    short_cfg = replace(cfg, epochs=7, epoch_size=n // 8, lr_drop_epoch=6)
    long_cfg = replace(cfg, epochs=7, epoch_size=None, lr_drop_epoch=6)
    short = targets(short_cfg, prep.sources, make_loader(short_cfg, prep.train, 0))
    loader = make_loader(long_cfg, prep.train, 0)
    cached = targets(long_cfg, prep.sources, loader)
    assert short == prep.sources.features and isinstance(cached, FeatureCache)
    assert targets(long_cfg, prep.sources, loader, epochs=1) is not prep.sources.features  # 1 pass still caches
    assert targets(replace(long_cfg, cache=False), prep.sources, loader) == prep.sources.features
    paths = ["pruned.stage1", "pruned.stage2", "aux.act_fc1"]
    for x, _ in loader:
        got, want = cached(x, paths), short(x, paths)
        for p in paths:
            torch.testing.assert_close(got[p], want[p], rtol=1e-5, atol=1e-5)
    assert cached.hits == len(loader) and cached.misses == 0


def test_adam_state_at_the_switch_is_fresh_under_reset_policies_and_stale_when_kept(tiny_prep):
    from dataclasses import replace

    from indistill_lab.experiments.optimizer_state import adam_state_at_switch

    cfg, prep = tiny_prep
    kept = adam_state_at_switch(prep, replace(cfg, optimizer_state="run"))
    fresh = adam_state_at_switch(prep, replace(cfg, optimizer_state="phase"))
    assert [r["layer"] for r in kept] == [r["layer"] for r in fresh] and "stage1.conv1" in [r["layer"] for r in kept]
    conv_rows = [r for r in kept if r["layer"].startswith("stage")]
    assert all(r["adam_steps"] > 1 for r in conv_rows)  # the MSE phases' steps are still in the state
    for r in fresh:  # one step after a reset, bias-corrected v is exactly g^2
        assert r["adam_steps"] == 1 and r["ratio"] == pytest.approx(1.0, rel=1e-4)


def test_prepare_skips_the_fine_tune_only_when_no_method_reads_it(tiny_prep):
    from indistill_lab.experiments.runs import needs_finetune
    assert needs_finetune(["indistill-finetuned"]) and needs_finetune(["pkt", get_method("indistill-finetuned")])
    assert not needs_finetune(["student-ce", "hinton-kd", "pkt", "fitnets", "indistill-paper", "indistill-reference",
                               "indistill-kd"])
    cfg, full = tiny_prep
    assert "tuned" in dict(full.sources.named_children())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INDISTILL_QUICK", "1")
        lean = prepare(cfg, log=lambda m: None, finetune=False)
    assert "tuned" not in dict(lean.sources.named_children())
    x = lean.train.x[:4]
    assert torch.equal(lean.sources.features(x, ["reference.stage2"])["reference.stage2"],
                       full.sources.features(x, ["reference.stage2"])["reference.stage2"])
    with pytest.raises(KeyError, match="one of teacher, aux, pruned, kept, reference"):
        lean.sources.features(x, ["tuned.stage1"])


def test_the_projection_says_evaluation_is_not_included_and_which_protocol_scores_the_runs():
    from indistill_lab.experiments.reproduce import projection

    short = projection(RunConfig(epochs=7, epoch_size=512, lr_drop_epoch=5, batch_size=8), 2, 1, 60_000)
    assert "evaluation not included" in short and "10,000-image training subset" in short and "--full-eval" in short
    full = projection(RunConfig(batch_size=8), 2, 1, 60_000)
    assert "the full protocol (all test queries x all 60,000 training images)" in full
