"""Curriculum constructors, active terms, every validation message, JSON, and the objective in training."""
import pytest
import torch

from indistill_lab.curriculum import (Curriculum, CurriculumError, Phase, Term, allocate_epochs,
                                      embedding_term, stage_pairs)
from indistill_lab.difficulty import layer_difficulty
from indistill_lab.objective import CurriculumObjective
from indistill_lab.taps import OUTPUT
from indistill_lab.data import DATASETS, Loader, Split
from indistill_lab.models import build_model
from indistill_lab.train import Callback, Trainer

PAIRS = [("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]
FINAL = Term("act_fc1", "act_fc1", "pkt")


def test_paper_rule_gives_a_plus_k_epochs_shallow_to_deep_one_at_a_time():
    c = Curriculum.paper(PAIRS, FINAL, total_epochs=70, a=2)
    assert [(p.student, p.start, p.epochs) for p in c.phases] == [("stage1", 0, 3), ("stage2", 3, 4), ("stage3", 7, 5)]
    assert c.final_begins == 12
    for epoch in range(70):
        assert len(c.active_terms(epoch)) == 1  # only one loss term at a time
    assert [t.key for t in c.active_terms(2)] == ["mse/stage1"]
    assert [t.key for t in c.active_terms(3)] == ["mse/stage2"]
    assert [t.key for t in c.active_terms(11)] == ["mse/stage3"]
    assert c.active_terms(12) == [FINAL] and c.active_terms(69) == [FINAL]
    assert c.active_terms(70) == []
    assert [p.epochs for p in Curriculum.paper(PAIRS, FINAL, 30, a=0).phases] == [1, 2, 3]


def test_difficulty_allocation_is_proportional_within_budget():
    assert allocate_epochs([3, 4, 5], 12) == [3, 4, 5]
    assert allocate_epochs([0.1, 0.1, 0.8], 10) == [2, 2, 6]  # floor 1 each, 7 spare split 0.7/0.7/5.6
    assert allocate_epochs([0, 0, 0], 6) == [2, 2, 2]
    assert sum(allocate_epochs([0.3, 0.9, 0.2], 11, min_epochs=2)) == 11
    c = Curriculum.from_difficulty(PAIRS, [1.0, 1.0, 2.0], budget=8, final=FINAL, total_epochs=10)
    assert [(p.start, p.epochs) for p in c.phases] == [(0, 2), (2, 2), (4, 4)]
    with pytest.raises(CurriculumError, match="raise the budget to 3"):
        allocate_epochs([1, 2, 3], 2)
    with pytest.raises(CurriculumError, match="must be >= 0"):
        allocate_epochs([1, -2, 3], 6)


def test_all_at_once_control_and_by_hand():
    c = Curriculum.all_at_once(PAIRS, epochs=12, final=FINAL, total_epochs=20, weight=0.5)
    assert [t.key for t in c.active_terms(0)] == ["mse/stage1", "mse/stage2", "mse/stage3"]
    assert all(t.weight == 0.5 for t in c.active_terms(11)) and c.active_terms(12) == [FINAL]
    hand = Curriculum((Phase("stage1", "stage1", "mse", 2.0, start=0, epochs=2),
                       Phase("stage3", "stage3", "mse", 1.0, start=1, epochs=3)), FINAL, 6, final_start=2)
    assert [(t.key, t.weight) for t in hand.active_terms(1)] == [("mse/stage1", 2.0), ("mse/stage3", 1.0)]
    assert [t.key for t in hand.active_terms(3)] == ["mse/stage3", "pkt/act_fc1"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(phases=(Phase("stage1", "stage1", epochs=0),)), r"length 0 epochs; give it at least 1 epoch"),
    (dict(phases=(Phase("stage1", "stage1", epochs=-2),)), r"length -2 epochs"),
    (dict(phases=(Phase("stage1", "stage1", start=-1, epochs=2),)), r"starts at epoch -1; epochs count from 0"),
    (dict(phases=(Phase("stage1", "stage1", epochs=12),)), r"ends at epoch 12 but training has 10 epochs"),
    (dict(phases=(Phase("stage1", "stage1", epochs=6),), critical_end=5, enforce_critical=True),
     r"after the critical period ends \(epoch 5\)"),
    (dict(phases=(Phase("stage1", "stage1", "l1"),)), r"unknown loss 'l1'; use one of kd, pkt, mse, fitnets"),
    (dict(phases=(Phase("stage1", "stage1", weight=-1.0),)), r"weight -1.0 is negative"),
    (dict(phases=(Phase("stage1", "stage1", start=2, epochs=2),)), r"epoch 0 has no active term"),
    (dict(phases=(Phase("stage1", "stage1", epochs=10),)), r"final term starts at epoch 10 and never runs"),
    (dict(phases=(), critical_end=11), r"critical_end is 11; it must lie in 1..total_epochs"),
    (dict(phases=(Phase("act_fc1", "act_fc1", "pkt", epochs=3),), final_start=0), r"share the name"),
    (dict(phases=(), total_epochs=0), r"total_epochs is 0"),
    (dict(phases=(Phase("stage1", "stage1", epochs=2.5),)), r"must be whole numbers of epochs"),
])
def test_validation_messages(kwargs, message):
    args = dict(final=FINAL, total_epochs=10) | kwargs
    with pytest.raises(CurriculumError, match=message):
        Curriculum(**args)


def test_critical_period_is_informative_unless_enforced():
    c = Curriculum.paper(PAIRS, FINAL, total_epochs=20, critical_end=8)
    assert [p.student for p in c.outside_critical()] == ["stage3"]


def test_unknown_layers_and_shape_mismatch_against_models():
    teacher, student = build_model("auxiliary"), build_model("student")
    bad = Curriculum.paper([("stage1", "stage1"), ("stage2", "stage_2")], FINAL, 10)
    with pytest.raises(CurriculumError, match=r"student layer: Unknown layer path 'stage_2'.*Did you mean 'stage2'"):
        bad.check_models(teacher, student)
    mismatched = Curriculum.paper(PAIRS, FINAL, 20)
    with pytest.raises(CurriculumError, match="prune the teacher to the student's widths"):
        mismatched.check_models(teacher, student, torch.randn(2, 1, 28, 28))
    mismatched.check_models(student, student, torch.randn(2, 1, 28, 28))  # aligned: passes


def test_json_round_trip(tmp_path):
    c = Curriculum((Phase("stage1", "stage1", "fitnets", 0.5, start=0, epochs=2),
                    Phase(OUTPUT, OUTPUT, "kd", 1.0, {"temperature": 2.0}, start=1, epochs=2)),
                   FINAL, 8, critical_end=4, enforce_critical=True, final_start=3)
    assert Curriculum.from_json(c.to_json()) == c
    path = tmp_path / "c.json"
    c.to_json(path)
    assert Curriculum.from_json(path) == c
    with pytest.raises(CurriculumError, match="unknown keys \\['epochs'\\]"):
        Curriculum.from_dict({"phases": [], "total_epochs": 3, "epochs": 3})


def test_stage_pairs_embedding_term_and_difficulty():
    teacher, student = build_model("student"), build_model("student")
    assert stage_pairs(teacher, student) == PAIRS
    assert embedding_term(teacher, student) == FINAL
    scores = layer_difficulty(teacher, teacher, PAIRS, torch.randn(8, 1, 28, 28))
    assert scores == pytest.approx([0.0, 0.0, 0.0])
    assert all(s > 0 for s in layer_difficulty(teacher, student, PAIRS, torch.randn(8, 1, 28, 28)))


def _tiny_split(n: int = 32) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                 DATASETS["fashion-mnist"], "random")


class _Record(Callback):
    def __init__(self) -> None:
        self.keys: list[tuple[int, tuple[str, ...]]] = []

    def on_batch_end(self, trainer, logs) -> None:
        self.keys.append((trainer.epoch, tuple(k for k in logs if k != "loss")))


def test_two_phase_curriculum_switches_loss_at_the_right_epoch_in_training():
    torch.manual_seed(0)
    teacher, student = build_model("student"), build_model("student")
    teacher_modes: list[bool] = []
    teacher.stage1.register_forward_hook(lambda m, i, o: teacher_modes.append(m.training))
    teacher.train()  # the objective must still produce targets in eval mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    c = Curriculum((Phase("stage1", "stage1", "fitnets", start=0, epochs=2),), FINAL, total_epochs=3)
    objective = CurriculumObjective(c, teacher, student)
    connector = objective.trainable_parameters()
    assert len(connector) == 2  # weight and bias of the 1x1 connector
    start_weight = connector[0].detach().clone()
    record = _Record()
    trainer = Trainer(student, objective=objective, callbacks=[record], progress=False, device="cpu")
    history = trainer.fit(Loader(_tiny_split(), batch_size=16, shuffle=True), epochs=3)
    assert {e: k for e, k in record.keys} == {0: ("fitnets/stage1",), 1: ("fitnets/stage1",), 2: ("pkt/act_fc1",)}
    assert [sorted(k for k in e if "/" in k) for e in history.epochs] == [["fitnets/stage1"]] * 2 + [["pkt/act_fc1"]]
    assert teacher_modes and not any(teacher_modes)
    assert teacher.training  # the caller's mode is restored
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(start_weight, connector[0].detach())  # the connector was optimised


def test_objective_uses_plugged_in_teacher_features():
    student = build_model("student")
    calls: list[tuple[str, ...]] = []

    def source(x, paths):
        calls.append(tuple(paths))
        return {p: torch.zeros(len(x), 64) for p in paths}

    c = Curriculum((), Term("act_fc1", "act_fc1", "mse"), total_epochs=1)
    objective = CurriculumObjective(c, build_model("auxiliary"), student, teacher_features=source)
    x = torch.randn(4, 1, 28, 28)
    terms = objective(student, x, torch.zeros(4, dtype=torch.long), 0)
    assert calls[-1] == ("act_fc1",)
    assert terms["mse/act_fc1"].item() == pytest.approx(float((student.embed(x) ** 2).mean().detach()), rel=1e-5)


def test_editor_sliders_rules_and_timeline():
    from indistill_lab.viz.curriculum import CurriculumEditor, timeline_figure

    editor = CurriculumEditor(PAIRS, FINAL, total_epochs=20, critical_end=10, difficulty=[1.0, 1.0, 2.0], budget=8)
    assert editor.curriculum == Curriculum.paper(PAIRS, FINAL, 20, critical_end=10)
    editor.rule.value = "difficulty"
    assert [(p.start, p.epochs) for p in editor.curriculum.phases] == [(0, 2), (2, 2), (4, 4)]
    start, length, weight = editor.rows[2]
    length.value, weight.value = 7, 0.5  # stage3 now runs epochs 4-10, past the critical period
    assert editor.figure.data[0].x == (2, 2, 7, 9) and editor.figure.data[0].base == (0, 2, 4, 11)
    assert editor.curriculum.phases[2].weight == 0.5 and "run past the critical period" in editor.status.value
    start.value = 6  # leaves a gap at epochs 4-5
    assert "epoch 4 has no active term" in editor.status.value
    with pytest.raises(CurriculumError, match="epoch 4 has no active term"):
        editor.curriculum
    editor.rows[1][1].value = 0  # length 0 leaves stage2 out
    assert [p.student for p in editor.phases()] == ["stage1", "stage3"]
    editor.critical.value = 15
    assert editor.figure.layout.shapes[0].x1 == 15
    editor.rule.value = "all-at-once"
    assert {(p.start, p.epochs) for p in editor.curriculum.phases} == {(0, 8)}
    dotted = lambda: [s.x0 for s in editor.figure.layout.shapes if s.line.dash == "dot"]  # noqa: E731
    assert dotted() == list(range(1, 20)) and "cleared 19 time(s)" in editor.status.value  # default: each epoch
    editor.optimizer_state.value = "phase"
    assert dotted() == [8] == editor.curriculum.phase_starts()  # all layers 0-7, then the final term
    editor.optimizer_state.value = "run"
    assert dotted() == [] and "cleared 0 time(s)" in editor.status.value
    fig = timeline_figure(Curriculum.paper(PAIRS, FINAL, 20, critical_end=10))
    assert fig.data[0].x == (3, 4, 5, 8) and fig.layout.shapes[0].x1 == 10
    with pytest.raises(ValueError, match="pass `difficulty` scores"):
        CurriculumEditor(PAIRS, FINAL, 20, rule="difficulty")


def test_compare_curricula_records_terms_and_retrieval_and_view_browses_them():
    from indistill_lab.experiments.curriculum import compare_curricula
    from indistill_lab.viz.curriculum import ComparisonView

    teacher = build_model("student")
    runs = {"paper": Curriculum.sequential(PAIRS[:1], [1], FINAL, 2),
            "together": Curriculum.all_at_once(PAIRS[:2], 1, FINAL, 2)}
    split = _tiny_split(64)
    results = compare_curricula(runs, teacher, lambda: build_model("student"), split, split, top_k=10, batch_size=32)
    assert [sorted(e) for e in results["paper"]["epochs"]] == [["loss", "mse/stage1"], ["loss", "pkt/act_fc1"]]
    assert sorted(results["together"]["epochs"][0]) == ["loss", "mse/stage1", "mse/stage2"]
    assert Curriculum.from_dict(results["paper"]["curriculum"]) == runs["paper"]
    assert 0 <= results["paper"]["retrieval"]["cosine"]["map_11pt"] <= 1
    view = ComparisonView(results)
    assert view.figure.data[0].x == ("paper", "together")
    assert view.figure.data[0].y[1] == pytest.approx(100 * results["together"]["retrieval"]["euclidean"]["map_11pt"])
    view.metric.value = "precision_at_10"
    assert view.figure.data[0].y[0] == pytest.approx(100 * results["paper"]["retrieval"]["euclidean"]["precision_at_10"])
    view.add("mine", results["paper"])
    assert view.schedule.value == "mine" and len(view.figure.data[0].x) == 3
    curve = {t.name: t for t in view.figure.data[1:]}
    assert curve["mse/stage1"].x == (1,) and curve["pkt/act_fc1"].x == (2,) and curve["mse/stage2"].x == ()


def test_comparison_lab_buttons_train_what_they_show_and_keep_the_stored_comparison(tmp_path, monkeypatch):
    """'train and add my schedule' trains with the editor's optimizer policy (part of its cache key: two
    policies give two entries); 'fresh run of all' adds fresh runs beside the stored ones and leaves the
    stored file as it was; both report progress."""
    import subprocess

    from indistill_lab import cache
    from indistill_lab.experiments import curriculum as lab_module
    from indistill_lab.viz.curriculum import CurriculumEditor

    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path)
    policies: list[str] = []
    train_one = lab_module.train_with_curriculum

    def spy(*args, **kwargs):
        policies.append(kwargs["optimizer_state"])
        return train_one(*args, **kwargs)

    monkeypatch.setattr(lab_module, "train_with_curriculum", spy)
    split = _tiny_split(160)
    editor = CurriculumEditor(PAIRS[:1], FINAL, 2, a=0)
    lab = lab_module.ComparisonLab({"paper": Curriculum.sequential(PAIRS[:1], [1], FINAL, 2)},
                                   build_model("student"), lambda: build_model("student"), split, split,
                                   {"seed": 0, "optimizer_state": "epoch"}, editor=editor)
    for folder_cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "s"]):
        subprocess.run(["git", *folder_cmd], cwd=tmp_path, check=True)
    stored = {p.name: p.read_text() for p in tmp_path.glob("curriculum-compare-*.json")}
    assert policies == ["epoch"] and len(stored) == 1
    editor.optimizer_state.value = "run"
    lab.add_editor_schedule()
    editor.optimizer_state.value = "phase"
    lab.add_editor_schedule()
    assert policies == ["epoch", "run", "phase"]
    assert {"my schedule (run)", "my schedule (phase)"} <= set(lab.view.results)
    assert len(list(tmp_path.glob("curriculum-user-*.json"))) == 2
    lab.refresh()
    assert "paper (fresh)" in lab.view.results and "fresh run done" in lab.status.value
    assert {p.name: p.read_text() for p in tmp_path.glob("curriculum-compare-*.json")} == stored


def test_alpha_ce_plus_kd_is_a_curriculum_whose_terms_are_the_hand_sums(tiny_split):
    from torch.nn import functional as F

    from indistill_lab.curriculum import LABELS
    from indistill_lab.losses import KDLoss

    torch.manual_seed(0)
    teacher, student = build_model("auxiliary"), build_model("student")
    alpha = 0.3
    c = Curriculum.throughout([Term(LABELS, OUTPUT, "ce", alpha),
                               Term(OUTPUT, OUTPUT, "kd", 1 - alpha, {"temperature": 2.0})], total_epochs=2)
    assert c.layers("teacher") == [OUTPUT]  # the labels are not a layer of the teacher
    objective = CurriculumObjective(c, teacher, student)
    x, y = tiny_split.x[:8], tiny_split.y[:8]
    terms = objective(student.eval(), x, y, epoch=1)
    with torch.no_grad():
        logits, target = student(x), teacher.eval()(x)
    assert terms["ce/output"].item() == pytest.approx(alpha * F.cross_entropy(logits, y).item(), rel=1e-5)
    assert terms["kd/output"].item() == pytest.approx((1 - alpha) * KDLoss(2.0)(logits, target).item(), rel=1e-5)
    history = Trainer(student, objective, device="cpu", progress=False).fit(Loader(tiny_split, 16), 2)
    assert set(history.epochs[0]) >= {"ce/output", "kd/output", "loss"}
