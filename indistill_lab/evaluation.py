"""How a trained student is scored: accuracy and retrieval mAP as in the InDistill tables.

Retrieval: queries = test set, database = train set, penultimate (embedding) features, Euclidean
and cosine; mAP 11-point interpolated (the tables' metric) beside the standard mAP; precision at
100. A method that never trains the classifier gets a linear probe on frozen train embeddings.
A `reproduce` run shorter than one pass passes a training subset instead (`pipeline.eval_train_split`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .adapter import spec_of
from .data import Split
from .metrics import embeddings, retrieval_metrics


def fit_probe(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, epochs: int = 30, seed: int = 0) -> nn.Linear:
    """Re-fit a linear classifier on frozen embeddings (Adam, full data, mini-batches of 1024)."""
    g = torch.Generator().manual_seed(seed)
    head.reset_parameters()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), generator=g).split(1024):
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def evaluate_student(model: nn.Module, train: Split, test: Split, trained_head: bool = True) -> dict[str, Any]:
    """Accuracy and retrieval (queries = test, database = train), in percent, for any model `spec_of` describes.

    With `trained_head=False` the model's classifier is first re-fitted as a linear probe on the frozen
    train embeddings (so the saved student is a working classifier); `accuracy_from` says which.
    """
    model = model.cpu().eval()
    head = spec_of(model).module(model, "classifier")
    db, queries = embeddings(model, train.x, device="cpu"), embeddings(model, test.x, device="cpu")
    if not trained_head:
        with torch.enable_grad():
            fit_probe(head, db, train.y)
    with torch.no_grad():
        acc = float((head(queries).argmax(1) == test.y).float().mean())
    out: dict[str, Any] = {"accuracy": round(100 * acc, 2), "accuracy_from": "head" if trained_head else "probe"}
    for distance in ("euclidean", "cosine"):
        m = retrieval_metrics(queries, test.y, db, train.y, distance, top_k=min(100, len(train)))
        d = distance[0]
        out.update({f"map_{d}": round(100 * m["map_11pt"], 2), f"map_std_{d}": round(100 * m["map"], 2),
                    f"top100_{d}": round(100 * m[f"precision_at_{min(100, len(train))}"], 2)})
    return out

