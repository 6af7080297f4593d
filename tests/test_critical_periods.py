"""Critical periods: the deficit, the runs' rows, the measured end of the period on constructed traces,
the experiment grids (same clean training for every N, equal lengths for the windows) and the delayed
InDistill warm-up."""
import pytest
import torch

from indistill_lab.critical_periods import (PROTOCOLS, DeficitObjective, blur, critical_period, decaying_lr,
                                            deficit_run, protocol_named)
from indistill_lab.curriculum import Curriculum, Term
from indistill_lab.data import DATASETS, Loader, Split
from indistill_lab.experiments.critical_periods import Grid
from indistill_lab.experiments.warmup_onset import delayed
from indistill_lab.fisher import FisherTraceCallback
from indistill_lab.models import ConvNet
from indistill_lab.train import Trainer


def test_blur_keeps_flat_images_and_removes_fine_detail():
    flat = torch.full((2, 1, 8, 8), 0.7)
    assert torch.allclose(blur(flat, 4), flat)
    checker = ((torch.arange(8).view(-1, 1) + torch.arange(8)) % 2).float().view(1, 1, 8, 8)
    assert torch.allclose(blur(checker, 2), torch.full_like(checker, 0.5))  # 2x2 averages of a checkerboard
    assert torch.equal(blur(checker, 1), checker)
    with pytest.raises(ValueError, match="blur factor"):
        blur(checker, 0)


def test_deficit_window_blurs_only_its_epochs():
    checker = ((torch.arange(8).view(-1, 1) + torch.arange(8)) % 2).float().view(1, 1, 8, 8)
    seen = []
    model = lambda x: (seen.append(x.std().item()), torch.zeros(len(x), 2, requires_grad=True))[1]  # noqa: E731
    objective = DeficitObjective(deficit_epochs=2, factor=2, start=3)
    for epoch in range(6):
        objective(model, checker, torch.zeros(1, dtype=torch.long), epoch)
    blurred = [s == pytest.approx(0.0) for s in seen]
    assert blurred == [False, False, False, True, True, False]
    assert [objective.blurred(e) for e in range(6)] == blurred
    assert decaying_lr(1.0, 0.5, 3) == {0: 1.0, 1: 0.5, 2: 0.25}
    assert PROTOCOLS["sgd-wd"].lr_schedule(2) == {0: 0.075, 1: pytest.approx(0.0675)}
    with pytest.raises(ValueError, match=">= 0"):
        DeficitObjective(-1)
    with pytest.raises(KeyError, match="sgd-wd"):
        protocol_named("rmsprop")


def test_a_known_peak_gives_its_time_as_the_end():
    images = [0, 1000, 2000, 3000, 4000, 5000]
    period = critical_period(images, [1, 50, 100, 60, 55, 50])
    assert period.end == 2000 and period.peak == 100 and period.fallen_at == 3000
    assert period.end_epoch(1500) == 2 and period.end_epoch(5000) == 1
    assert "peak at 2,000" in period.reason


def test_a_first_peak_counts_even_when_the_trace_rises_again_later():
    period = critical_period([0, 1, 2, 3, 4], [0, 10, 5, 12, 15])
    assert period.end == 1 and period.rebound == pytest.approx(1.5)
    assert "rises again to 150%" in period.reason


@pytest.mark.parametrize("trace", [[0, 1, 2, 3, 4, 5], [0, 5, 9, 10, 10, 10], [0, 10, 8, 9, 11, 9]])
def test_a_monotone_plateau_or_noisy_trace_has_no_peak(trace):
    period = critical_period(list(range(len(trace))), trace)  # falls of at most 20% < min_drop 0.3
    assert period.end is None and period.end_epoch(100) is None
    assert period.reason.startswith("no peak") and "has not closed by 5" in period.reason


def test_a_trace_that_only_falls_never_rose():
    period = critical_period([0, 1, 2], [10, 5, 2])
    assert period.end is None and period.reason.startswith("no rise")


def test_critical_period_rejects_bad_input():
    with pytest.raises(ValueError, match="equally long"):
        critical_period([0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="increase strictly"):
        critical_period([0, 2, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="finite and >= 0"):
        critical_period([0, 1, 2], [1, float("nan"), 3])
    with pytest.raises(ValueError, match="min_drop"):
        critical_period([0, 1, 2], [1, 2, 3], min_drop=1.5)
    with pytest.raises(ValueError, match="images_per_epoch"):
        critical_period([0, 1, 2], [0, 2, 1]).end_epoch(0)


def test_fisher_callback_measures_at_extra_steps_once():
    g = torch.Generator().manual_seed(0)
    info = DATASETS["fashion-mnist"]
    data = Split(torch.randn(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g), info, "toy")
    cb = FisherTraceCallback(data.x[:4], extra_steps=[1, 3])
    Trainer(ConvNet((2, 2), (4,)), callbacks=[cb], progress=False, device="cpu").fit(Loader(data, 16), epochs=2)
    assert [r["step"] for r in cb.records] == [0, 1, 3, 6]  # epoch ends at 3 and 6; step 3 measured once
    with pytest.raises(ValueError, match="extra_steps"):
        FisherTraceCallback(data.x[:4], extra_steps=[0])


def test_deficit_run_rows_follow_the_schedule():
    g = torch.Generator().manual_seed(0)
    info = DATASETS["fashion-mnist"]
    train = Split(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g), info, "toy")
    test = Split(torch.randn(20, 1, 28, 28, generator=g), torch.randint(0, 10, (20,), generator=g), info, "toy")
    rows = deficit_run(train, test, test.x[:4], total_epochs=4, deficit_epochs=2, deficit_start=1, epoch_size=32)
    assert [r["images_seen"] for r in rows] == [0, 32, 64, 96, 128]  # batch 128 > 32: one step per epoch
    assert [r["blurred"] for r in rows] == [0, 0, 1, 1, 0]
    assert [r["lr"] for r in rows][1:] == pytest.approx([0.075 * 0.9**e for e in range(4)])
    assert all(r["val_acc"] is not None for r in rows)
    layers = [k for k in rows[1] if k.startswith("fisher_") and k != "fisher_total"]
    assert len(layers) == 5 and rows[2]["fisher_total"] == pytest.approx(sum(rows[2][k] for k in layers))
    with pytest.raises(ValueError, match="end before the last"):
        deficit_run(train, test, test.x[:4], total_epochs=3, deficit_epochs=3)
    clean = deficit_run(train, test, test.x[:4], total_epochs=3, epoch_size=32)
    torch.manual_seed(123)  # whatever ran before, the seed alone fixes the run; a shorter run is a prefix
    assert deficit_run(train, test, test.x[:4], total_epochs=2, epoch_size=32) == clean[:3]
    assert rows[:2] == clean[:2]  # identical until the deficit starts


def test_grid_gives_every_deficit_the_same_clean_training_and_windows_equal_length():
    runs = Grid(clean_epochs=20, deficits=(8, 16), window=8, onsets=(8, 16), deficit_protocols=("sgd-wd",),
                fisher_protocols=("sgd", "adam")).conditions()
    first = [c for c in runs if c.protocol == "sgd-wd" and c.deficit_start == 0 and c.deficit_epochs]
    assert {c.total_epochs - c.deficit_epochs for c in first} == {20}
    windows = [c for c in runs if c.protocol == "sgd-wd" and c.deficit_epochs == 8]
    assert sorted(c.deficit_start for c in windows) == [0, 8, 16] and {c.total_epochs for c in windows} == {28}
    assert [(c.protocol, c.deficit_epochs) for c in runs if c.protocol != "sgd-wd"] == [("sgd", 0), ("adam", 0)]
    assert len(runs) == len(set(runs))  # the N = window run doubles as the window at onset 0


def test_delayed_warmup_moves_the_phases_and_keeps_the_length():
    final = Term("aux.act_fc1", "act_fc1", "pkt")
    paper = Curriculum.paper([("p.stage1", "stage1"), ("p.stage2", "stage2")], final, total_epochs=10, a=0)
    later = delayed(paper, 3)
    assert [(p.student, p.loss, p.start, p.epochs) for p in later.phases] == [
        ("act_fc1", "pkt", 0, 3), ("stage1", "mse", 3, 1), ("stage2", "mse", 4, 2)]
    assert later.total_epochs == 10 and later.final_begins == 6
    assert [[t.key for t in later.active_terms(e)] for e in (0, 3, 6, 9)] == [
        ["pkt/act_fc1"], ["mse/stage1"], ["pkt/act_fc1"], ["pkt/act_fc1"]]
    assert delayed(paper, 0).phases == paper.phases
    with pytest.raises(ValueError, match="no epoch of the final"):
        delayed(paper, 7)
    with pytest.raises(ValueError, match="onset must be"):
        delayed(paper, -1)


def test_fisher_explorer_draws_every_protocol_with_its_seed_band_and_end():
    from indistill_lab.viz.critical_periods import FisherExplorer, deficit_figure

    curves = ([0, 10, 20, 30], {0: [1, 8, 4, 3], 1: [1, 6, 5, 4]})
    explorer = FisherExplorer({"total": {"sgd-wd": curves, "adam": curves}}, {"total": {"sgd-wd": 10, "adam": None}})
    names = [t.name for t in explorer.figure.data]
    assert names == ["sgd-wd seed range", "sgd-wd (mean of 2 seeds)", "adam seed range", "adam (mean of 2 seeds)"]
    assert list(explorer.figure.data[1].x) == [10, 20, 30]  # log axis: the point at 0 images is left out
    assert list(explorer.figure.data[1].y) == [7, 4.5, 3.5]
    assert [s.x0 for s in explorer.figure.layout.shapes] == [10]  # only sgd-wd has a measured end
    assert "adam: no peak" in explorer.status.value
    explorer.scale.value = "linear"
    assert list(explorer.figure.data[1].x) == [0, 10, 20, 30]
    with pytest.raises(KeyError, match="layers: total"):
        FisherExplorer({"total": {}}, {}, layer="stage9")
    fig = deficit_figure({"sgd-wd": {0: {0: 0.0}, 8: {0: -2.0, 1: -1.0}}}, {"sgd-wd": {0: {0: -1.0}}}, 5000)
    means = [t for t in fig.data if t.name == "sgd-wd: mean"]
    assert list(means[0].x) == [0, 40000] and list(means[0].y) == [0.0, -1.5]


def test_recovery_control_gives_a_later_warmup_as_much_pkt_after_it():
    from indistill_lab.experiments.warmup_onset import config, per_onset, with_recovery

    cfg = config()
    longer = with_recovery(cfg, 6)
    assert (longer.epochs, longer.lr_drop_epoch) == (cfg.epochs + 6, cfg.lr_drop_epoch + 6)
    final = Term("aux.act_fc1", "act_fc1", "pkt")
    pairs = [("p.stage1", "stage1"), ("p.stage2", "stage2"), ("p.stage3", "stage3")]
    start = delayed(Curriculum.paper(pairs, final, cfg.epochs, a=cfg.a), 0)
    late = delayed(Curriculum.paper(pairs, final, longer.epochs, a=cfg.a), 6)
    assert start.total_epochs - start.final_begins == late.total_epochs - late.final_begins == 10
    rows = [{"config": cfg.digest(quick=False), "method": "pkt", "seed": 0, "map_e": 70.0},
            {"config": cfg.digest(quick=False), "method": "indistill-paper-onset-3", "seed": 1, "map_e": 60.0},
            {"config": longer.digest(quick=False), "method": "indistill-paper-onset-6", "seed": 0, "map_e": 50.0},
            {"config": cfg.digest(quick=True), "method": "pkt", "seed": 5, "map_e": 1.0}]  # a quick run: not read
    assert per_onset(rows, cfg) == ({3: {1: 60.0}}, {0: 70.0})
