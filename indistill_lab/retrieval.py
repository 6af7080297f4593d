"""One query at a time: rank the database and trace its precision-recall curve.

`metrics.retrieval_metrics` computes mAP for thousands of queries fast; this module shows
what it averages, for a single query: the ranking, the precision/recall at every rank and
the 11 interpolated points whose mean is that query's average precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

RECALL_POINTS = torch.linspace(0, 1, 11)


def distances(query: torch.Tensor, db: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """Distances from one query feature vector (D,) to every database row (N, D)."""
    if distance == "euclidean":
        return torch.cdist(query.view(1, -1).float(), db.float()).squeeze(0)
    if distance == "cosine":
        return 1 - F.cosine_similarity(query.view(1, -1).float(), db.float(), dim=1)
    raise ValueError(f"Unknown distance {distance!r}: use 'euclidean' or 'cosine'.")


@dataclass
class QueryRanking:
    """A query's full ranking: database indices nearest first, their distances and relevance."""

    order: torch.Tensor
    distances: torch.Tensor
    relevant: torch.Tensor

    @property
    def precision(self) -> torch.Tensor:
        """Precision after each rank (1-based ranks)."""
        hits = torch.cumsum(self.relevant.float(), 0)
        return hits / torch.arange(1, len(hits) + 1)

    @property
    def recall(self) -> torch.Tensor:
        hits = torch.cumsum(self.relevant.float(), 0)
        return hits / hits[-1].clamp(min=1)

    def interpolated(self) -> torch.Tensor:
        """Interpolated precision at recall 0, 0.1, ..., 1: the best precision at any recall >= r."""
        precision, recall = self.precision, self.recall
        return torch.stack([precision[recall >= r - 1e-9].max() for r in RECALL_POINTS])

    def average_precision_11pt(self) -> float:
        return float(self.interpolated().mean())

    def average_precision(self) -> float:
        """Non-interpolated AP: mean precision at the ranks of the relevant items."""
        return float(self.precision[self.relevant].mean())

    def precision_at(self, k: int) -> float:
        return float(self.relevant[:k].float().mean())


def rank_query(query: torch.Tensor, query_label: int, db: torch.Tensor, db_labels: torch.Tensor,
               distance: str = "euclidean") -> QueryRanking:
    """Rank the whole database for one query; ties keep database order (a stable sort)."""
    d = distances(query, db, distance)
    order = torch.sort(d, stable=True).indices
    return QueryRanking(order, d[order], db_labels[order] == query_label)
