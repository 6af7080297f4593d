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
    """Distances from one query feature vector (D,) to every database row (N, D).

    Computed in float64 (whatever the common offset of the features), returned in float32 unless
    an input is float64; equal distances are exact ties as in `metrics.retrieval_metrics`, cosine
    distances are resolved to float32 like there, and a zero vector is at cosine distance 1 from all.
    """
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"Unknown distance {distance!r}: use 'euclidean' or 'cosine'.")
    if db.dim() != 2 or query.numel() != db.shape[1]:
        raise ValueError(f"The query has {query.numel()} values and the database shape {tuple(db.shape)}; "
                         "give one feature vector (D,) and a database (N, D) from the same model.")
    if not (torch.isfinite(query).all() and torch.isfinite(db).all()):
        raise ValueError("The features contain NaN or infinite values (a diverged model?); "
                         "retrieval needs finite features.")
    dtype = torch.float64 if torch.float64 in (query.dtype, db.dtype) else torch.float32
    q, d = query.detach().view(1, -1).double(), db.detach().double()
    if distance == "euclidean":
        return (d - q).norm(dim=1).to(dtype)
    return (1 - (F.normalize(d, dim=1) @ F.normalize(q, dim=1).T).squeeze(1).float()).to(dtype)


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
