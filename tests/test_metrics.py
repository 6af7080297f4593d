"""Metrics: retrieval mAP (hand-computed cases, ties, chunking, a brute-force reference), counts, accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from indistill_lab.adapter import ModelSpec, with_spec
from indistill_lab.data import Split, dataset_info
from indistill_lab.metrics import (accuracy, count_flops, count_parameters, evaluate_retrieval,
                                   retrieval_metrics)

# Hand case, 1-D features, Euclidean distance = |x - q|. Labels A=0, B=1.
# Database x: 1(A) 2(B) 3(A) 4(B) 5(B) 6(A).
#
# Query q=0, label A: ranking A B A B B A, relevant at ranks 1, 3, 6.
#   precision there: 1/1, 2/3, 3/6 at recall 1/3, 2/3, 1.
#   AP = (1 + 2/3 + 1/2) / 3 = 13/18.
#   11-point: levels 0, .1, .2, .3 -> max over recall >= r of precision = 1 (4 levels);
#             .4, .5, .6 -> max(2/3, 1/2) = 2/3 (3 levels); .7 ... 1.0 -> 1/2 (4 levels).
#   AP11 = (4 * 1 + 3 * 2/3 + 4 * 1/2) / 11 = 8/11.
#   precision@3 = 2/3.
# Query q=10, label B: distances 9 8 7 6 5 4 for x = 1..6, ranking x=6(A) 5(B) 4(B) 3(A) 2(B) 1(A),
#   relevant at ranks 2, 3, 5: precision 1/2, 2/3, 3/5.
#   AP = (1/2 + 2/3 + 3/5) / 3 = 53/90.
#   interpolated at the three points: max(1/2, 2/3, 3/5) = 2/3, max(2/3, 3/5) = 2/3, 3/5;
#   AP11 = (4 * 2/3 + 3 * 2/3 + 4 * 3/5) / 11 = 106/165.
#   precision@3 = 2/3.
# Means: mAP = (13/18 + 53/90) / 2 = 59/90, mAP11 = (8/11 + 106/165) / 2 = 113/165, P@3 = 2/3.
HAND_DB_X = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
HAND_DB_Y = torch.tensor([0, 1, 0, 1, 1, 0])
HAND_Q_X = torch.tensor([[0.0], [10.0]])
HAND_Q_Y = torch.tensor([0, 1])
HAND_EXPECTED = {"map_11pt": 113 / 165, "map": 59 / 90, "precision_at_3": 2 / 3}


def test_hand_computed_case() -> None:
    got = retrieval_metrics(HAND_Q_X, HAND_Q_Y, HAND_DB_X, HAND_DB_Y, top_k=3)
    assert got == pytest.approx(HAND_EXPECTED, abs=1e-12)


def test_single_query_of_hand_case_and_precision_at_k() -> None:
    for k, expected in [(1, 1.0), (2, 0.5), (3, 2 / 3), (6, 0.5)]:
        got = retrieval_metrics(HAND_Q_X[:1], HAND_Q_Y[:1], HAND_DB_X, HAND_DB_Y, top_k=k)
        assert got["map"] == pytest.approx(13 / 18)
        assert got["map_11pt"] == pytest.approx(8 / 11)
        assert got[f"precision_at_{k}"] == pytest.approx(expected)


def test_perfect_ranking_gives_one() -> None:
    # Tight clusters along orthogonal axes: by either distance every query ranks all of its class first.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    feats = 10.0 * nn.functional.one_hot(y).float() + 0.1 * torch.rand(40, 2, generator=gen)
    for distance in ("euclidean", "cosine"):
        got = retrieval_metrics(feats, y, feats, y, distance, top_k=20)
        assert got == pytest.approx({"map_11pt": 1.0, "map": 1.0, "precision_at_20": 1.0})


def test_euclidean_and_cosine_rank_differently() -> None:
    # Query (1, 0), label A. Database: (3, 0) label A (Euclidean 2, same direction) and (1, 1) label B
    # (Euclidean 1, 45 degrees). Euclidean ranks B first: AP = 1/2; cosine ranks A first: AP = 1.
    q, qy = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    db, dby = torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1])
    assert retrieval_metrics(q, qy, db, dby, "euclidean", top_k=1)["map"] == pytest.approx(0.5)
    assert retrieval_metrics(q, qy, db, dby, "cosine", top_k=1)["map"] == pytest.approx(1.0)


@pytest.mark.parametrize("db_x, db_y, pessimistic, optimistic", [
    # Distances 1 (B), 1 (A), 2 (A). Pessimistic B A A: ranks 2, 3 -> AP (1/2 + 2/3) / 2 = 7/12.
    # Optimistic A B A: ranks 1, 3 -> AP (1 + 2/3) / 2 = 5/6.
    ([[-1.0], [1.0], [2.0]], [1, 0, 0], 7 / 12, 5 / 6),
    # All three at distance 1, two relevant tied with each other. Pessimistic B A A -> 7/12;
    # optimistic A A B -> 1.
    ([[1.0], [-1.0], [1.0]], [0, 0, 1], 7 / 12, 1.0),
])
def test_ties_are_broken_as_documented(db_x: list, db_y: list, pessimistic: float, optimistic: float) -> None:
    q, qy = torch.tensor([[0.0]]), torch.tensor([0])
    db, dby = torch.tensor(db_x), torch.tensor(db_y)
    assert retrieval_metrics(q, qy, db, dby, ties="pessimistic", top_k=1)["map"] == pytest.approx(pessimistic)
    assert retrieval_metrics(q, qy, db, dby, ties="optimistic", top_k=1)["map"] == pytest.approx(optimistic)


def test_collapsed_features_score_below_chance_unless_optimistic() -> None:
    y = torch.arange(30) % 3
    feats = torch.ones(30, 4)
    for distance in ("euclidean", "cosine"):
        low = retrieval_metrics(feats, y, feats, y, distance, top_k=10)
        high = retrieval_metrics(feats, y, feats, y, distance, ties="optimistic", top_k=10)
        assert low["map"] < 1 / 3 and low["precision_at_10"] == 0.0
        assert high == pytest.approx({"map_11pt": 1.0, "map": 1.0, "precision_at_10": 1.0})


def _reference_metrics(q: torch.Tensor, qy: torch.Tensor, db: torch.Tensor, dby: torch.Tensor,
                       distance: str, top_k: int) -> dict[str, float]:
    """Straight from the definitions: full argsort (pessimistic ties), precision at every rank."""
    if distance == "euclidean":
        dist = torch.cdist(q.double(), db.double())
    else:
        dist = 1 - nn.functional.normalize(q.double(), dim=1) @ nn.functional.normalize(db.double(), dim=1).T
    ap11, ap, p_at_k = [], [], []
    for d, label in zip(dist.numpy(), qy.tolist()):
        relevant = (dby.numpy() == label)
        order = np.lexsort((relevant, d))  # by distance, then irrelevant (False) before relevant
        hits = relevant[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        recall = np.cumsum(hits) / hits.sum()
        ap11.append(np.mean([precision[recall >= r - 1e-12].max() for r in np.linspace(0, 1, 11)]))
        ap.append(precision[hits].mean())
        p_at_k.append(hits[:top_k].mean())
    return {"map_11pt": float(np.mean(ap11)), "map": float(np.mean(ap)),
            f"precision_at_{top_k}": float(np.mean(p_at_k))}


def test_matches_brute_force_reference_and_chunking_does_not_matter() -> None:
    gen = torch.Generator().manual_seed(1)
    # Small integer features: exact float arithmetic, many exact ties.
    q = torch.randint(0, 3, (37, 5), generator=gen).float()
    db = torch.randint(0, 3, (150, 5), generator=gen).float()
    qy, dby = torch.randint(0, 4, (37,), generator=gen), torch.randint(0, 4, (150,), generator=gen)
    expected = _reference_metrics(q, qy, db, dby, "euclidean", 10)
    for chunk_size in (1, 7, 1000):
        got = retrieval_metrics(q, qy, db, dby, "euclidean", top_k=10, chunk_size=chunk_size)
        assert got == pytest.approx(expected, abs=1e-12)
    # Continuous features for cosine (no exact ties to be decided by rounding).
    q, db = torch.randn(37, 5, generator=gen), torch.randn(150, 5, generator=gen)
    expected = _reference_metrics(q, qy, db, dby, "cosine", 10)
    assert retrieval_metrics(q, qy, db, dby, "cosine", top_k=10, chunk_size=5) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    ({"query_labels": torch.tensor([0])}, "differ in length"),
    ({"db_feats": torch.zeros(0, 1), "db_labels": torch.zeros(0, dtype=torch.long)}, "database set is empty"),
    ({"distance": "manhattan"}, "Unknown distance"),
    ({"ties": "average"}, "Unknown tie rule"),
    ({"top_k": 7}, "top_k=7"),
    ({"db_feats": torch.zeros(6, 2)}, "differ in dimension"),
    ({"query_labels": torch.tensor([0, 5])}, "no item in the database"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"db_feats": torch.tensor([[1.0], [float("nan")], [3.0], [4.0], [5.0], [6.0]])}, "NaN or infinite"),
])
def test_bad_input_errors(kwargs: dict, message: str) -> None:
    args = {"query_feats": HAND_Q_X, "query_labels": HAND_Q_Y, "db_feats": HAND_DB_X, "db_labels": HAND_DB_Y,
            "top_k": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**args)


def _flatten_embed() -> nn.Module:
    """A 'model' whose embedding (module '0', described with a ModelSpec) is its input flattened, to check
    evaluate_retrieval's wiring."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    return with_spec(model, ModelSpec(stages=("0",), embedding="0", classifier="1", input_shape=(1, 1, 1)))


def test_evaluate_retrieval_embeds_both_splits() -> None:
    info = dataset_info("fashion-mnist")
    queries = Split(HAND_Q_X.view(-1, 1, 1, 1), HAND_Q_Y, info, "q")
    db = Split(HAND_DB_X.view(-1, 1, 1, 1), HAND_DB_Y, info, "db")
    got = evaluate_retrieval(_flatten_embed(), queries, db, top_k=3, device="cpu")
    assert got["euclidean"] == pytest.approx(HAND_EXPECTED)
    # 1-D positive features all point the same way: every cosine distance ties at 0 (pessimistic).
    assert got["cosine"]["precision_at_3"] == pytest.approx(0.0)


def _tiny_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))


def test_count_parameters_and_flops_by_hand() -> None:
    net = _tiny_net()
    # Conv 1->2, 3x3: 2 * 1 * 9 weights + 2 biases = 20; Linear 18->4: 72 + 4 = 76. Total 96.
    assert count_parameters(net) == 96
    net[0].requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == 76
    # On a 1x5x5 input the conv output is 2x3x3 = 18 values of 9 MACs each = 162; linear 18 * 4 = 72.
    assert count_flops(net, (1, 5, 5)) == 234


def test_accuracy_on_a_fixed_linear_model() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    model.train()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])  # predictions 0, 1, 0, 1: three of four correct
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert accuracy(model, batches, device="cpu") == pytest.approx(0.75)
    assert model.training, "accuracy() must restore train mode"
    with pytest.raises(ValueError, match="no data"):
        accuracy(model, [], device="cpu")
