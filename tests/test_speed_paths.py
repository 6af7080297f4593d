"""The fast paths compute what the plain ones do: the channels-last layout of the ConvNets (training
steps, distillation with the feature cache, evaluation) and glibc's kept freed memory."""
from __future__ import annotations

import pytest
import torch

from indistill_lab.curriculum import Curriculum, Phase, Term
from indistill_lab.data import Split, dataset_info
from indistill_lab.evaluation import evaluate_student
from indistill_lab.feature_cache import FeatureCache, IndexedLoader
from indistill_lab.metrics import embeddings
from indistill_lab.models import build_model, to_channels_last
from indistill_lab.objective import CurriculumObjective
from indistill_lab.pruning import prune_to_widths
from indistill_lab.sources import Sources
from indistill_lab.train import Callback, Trainer, keep_freed_memory

TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32 sums in another order, over a few Adam steps


def _train(layout: str, loader: IndexedLoader, objective_for=None) -> tuple[Trainer, list[float]]:
    torch.manual_seed(0)
    student = build_model("student")
    student.channels_last = layout == "channels_last"
    objective = objective_for(student) if objective_for is not None else None
    kwargs = {"objective": objective} if objective is not None else {}
    trainer = Trainer(student, device="cpu", progress=False, **kwargs)
    losses: list[float] = []

    class Record(Callback):
        def on_batch_end(self, _trainer: Trainer, logs: dict[str, float]) -> None:
            losses.append(logs["loss"])

    trainer.callbacks.append(Record())
    trainer.fit(loader, 2)
    return trainer, losses


def _assert_same_training(fast: tuple[Trainer, list[float]], plain: tuple[Trainer, list[float]],
                          x: torch.Tensor) -> None:
    """Same losses, weights and eval-mode outputs. A conv bias right before a BatchNorm has a zero
    gradient up to rounding, which Adam normalises into full-size steps, so those biases (and the BN
    running means that absorb them) follow rounding noise in either layout; with batch statistics they
    cancel exactly, so the train-mode outputs check what the network computes."""
    (fast_trainer, fast_losses), (plain_trainer, plain_losses) = fast, plain
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), **TOL)
    plain_state = plain_trainer.model.state_dict()
    for name, value in fast_trainer.model.state_dict().items():
        if not (name.startswith("stage") and name.endswith(("conv1.bias", "conv2.bias", "running_mean"))):
            torch.testing.assert_close(value, plain_state[name], **TOL, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fast_trainer.model.train()(x), plain_trainer.model.train()(x), **TOL)


def test_to_channels_last_keeps_values_and_marks_one_channel_images():
    x = torch.randn(3, 1, 28, 28)
    y = to_channels_last(x)
    assert torch.equal(x, y) and y.stride(1) == 1
    assert to_channels_last(y) is y
    assert to_channels_last(torch.randn(3, 5)).shape == (3, 5)


def test_student_steps_match_the_plain_layout(tiny_split):
    _assert_same_training(_train("channels_last", IndexedLoader(tiny_split, 16, seed=0)),
                          _train("plain", IndexedLoader(tiny_split, 16, seed=0)), tiny_split.x)


def test_cached_distillation_steps_match_the_plain_layout(tiny_split):
    torch.manual_seed(1)
    aux = build_model("auxiliary").eval()
    pruned = prune_to_widths(aux, build_model("student").widths)[0].eval()
    sources = Sources(aux=aux, pruned=pruned)
    curriculum = Curriculum((Phase("pruned.stage1", "stage1", "mse", start=0, epochs=1),
                             Phase("pruned.stage3", "stage3", "mse", start=0, epochs=1)),
                            Term("aux.act_fc1", "act_fc1", "pkt"), 2)
    runs = {}
    for layout in ("channels_last", "plain"):
        pruned.channels_last = aux.channels_last = layout == "channels_last"
        loader = IndexedLoader(tiny_split, 16, seed=0)
        cache = FeatureCache(sources.features, loader)

        def objective_for(student, cache=cache):
            return CurriculumObjective(curriculum, sources, student, example=tiny_split.x[:4], teacher_features=cache)

        runs[layout] = _train(layout, loader, objective_for)
        assert cache.hits == 8 and cache.misses == 1  # every training batch from the tables; the probe batch computed
    _assert_same_training(runs["channels_last"], runs["plain"], tiny_split.x)


def test_evaluation_numbers_are_unchanged():
    g = torch.Generator().manual_seed(0)
    info = dataset_info("fashion-mnist")
    y = torch.arange(600) % 10
    x = torch.randn(600, 1, 28, 28, generator=g) * 0.5 + (y.float() / 5 - 1).view(-1, 1, 1, 1)
    train, test = Split(x[:500], y[:500], info, "db"), Split(x[500:], y[500:], info, "queries")
    torch.manual_seed(0)
    model = build_model("student")
    results = {}
    for layout in ("channels_last", "plain"):
        model.channels_last = layout == "channels_last"
        torch.manual_seed(1)  # the probe's initialisation
        results[layout] = evaluate_student(model, train, test, trained_head=False)
        feats = embeddings(model, test.x, device="cpu")
        results[layout + " embeddings"] = feats
    torch.testing.assert_close(results["channels_last embeddings"], results["plain embeddings"], **TOL)
    fast, plain = results["channels_last"], results["plain"]
    assert fast.keys() == plain.keys() and fast["accuracy_from"] == plain["accuracy_from"]
    for key in fast.keys() - {"accuracy_from"}:  # percentages with 2 decimals; embeddings equal to float tolerance
        assert abs(fast[key] - plain[key]) <= 0.05, (key, fast[key], plain[key])


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the layout choice is a CPU (oneDNN) speed-up")
def test_convnet_activations_are_channels_last():
    model = build_model("student")
    out = model.stage1(to_channels_last(torch.randn(2, 1, 28, 28)))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_keep_freed_memory_is_safe_to_repeat():
    first, second = keep_freed_memory(), keep_freed_memory()
    assert first == second and isinstance(first, bool)


def test_table_runs_are_single_threaded_in_process_too_and_the_thread_count_is_restored():
    import torch

    from indistill_lab.experiments.reproduce import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread():
            raise RuntimeError("a failing run")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
