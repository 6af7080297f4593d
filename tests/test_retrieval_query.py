import pytest
import torch

from indistill_lab.metrics import retrieval_metrics
from indistill_lab.report import markdown_table, zoo_rows
from indistill_lab.retrieval import distances, rank_query


def test_single_query_curve_by_hand():
    # database at 1, 2, 3, 4 on a line; query at 0 with label 1; labels 1, 0, 1, 0
    db = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    r = rank_query(torch.tensor([0.0]), 1, db, torch.tensor([1, 0, 1, 0]))
    assert r.order.tolist() == [0, 1, 2, 3]
    assert torch.allclose(r.precision, torch.tensor([1, 1 / 2, 2 / 3, 2 / 4]))
    assert torch.allclose(r.recall, torch.tensor([0.5, 0.5, 1.0, 1.0]))
    # interpolated precision: 1.0 for recall <= 0.5 (6 points), 2/3 for recall 0.6..1.0 (5 points)
    assert r.average_precision_11pt() == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert r.average_precision() == pytest.approx((1 + 2 / 3) / 2)
    assert r.precision_at(2) == 0.5


def test_single_query_agrees_with_batched_metric():
    g = torch.Generator().manual_seed(0)
    db, db_y = torch.randn(300, 5, generator=g), torch.randint(0, 3, (300,), generator=g)
    q, q_y = torch.randn(20, 5, generator=g), torch.randint(0, 3, (20,), generator=g)
    for distance in ("euclidean", "cosine"):
        per_query = [rank_query(q[i], int(q_y[i]), db, db_y, distance) for i in range(20)]
        batched = retrieval_metrics(q, q_y, db, db_y, distance, top_k=10, chunk_size=7)
        assert batched["map_11pt"] == pytest.approx(sum(r.average_precision_11pt() for r in per_query) / 20, abs=1e-5)
        assert batched["map"] == pytest.approx(sum(r.average_precision() for r in per_query) / 20, abs=1e-5)
        assert batched["precision_at_10"] == pytest.approx(sum(r.precision_at(10) for r in per_query) / 20)


def test_distances_and_unknown_distance():
    db = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert torch.allclose(distances(torch.tensor([0.0, 0.0]), db), torch.tensor([5.0, 1.0]))
    assert torch.allclose(distances(torch.tensor([2.0, 0.0]), db, "cosine"), torch.tensor([1 - 3 / 5, 0.0]))
    with pytest.raises(ValueError, match="use 'euclidean' or 'cosine'"):
        distances(torch.zeros(2), db, "manhattan")


def test_tables():
    rows = zoo_rows({"models": {"student": {"test_accuracy": 90.6, "map_e": 80.123, "epochs": 10}}})
    assert rows[0]["mAP (e)"] == 80.123 and rows[0]["mAP (c)"] == "n/a"
    text = markdown_table([{"model": "a", "parameters": 15050, "widths": [8, 16]}])
    assert text.splitlines() == ["| model | parameters | widths |", "|---|---|---|", "| a | 15,050 | 8/16 |"]
    with pytest.raises(ValueError):
        markdown_table([])
