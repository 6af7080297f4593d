"""Model measurements: accuracy, embeddings, retrieval mAP, parameter and FLOP counts."""
from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
from torch import nn

from .adapter import spec_of
from .config import default_device
from .modes import eval_mode

if TYPE_CHECKING:
    from .data import Split


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] over (x, y) batches, in eval mode (train mode is restored)."""
    device = torch.device(device) if device is not None else default_device()
    correct = total = 0
    with eval_mode(model):
        for x, y in data:
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    if total == 0:
        raise ValueError("accuracy() got no data.")
    return correct / total


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Let glibc's malloc keep freed memory for reuse; True where it applied (Linux with glibc).

    A training step or an embedding batch frees its activations (megabytes each) and allocates them
    again in the next one. By default glibc hands such blocks back to the kernel (heap trim, mmap), so
    each step page-faults them in anew: a fifth of a small ConvNet's CPU training step, half of an
    embedding pass. With blocks below `mmap_threshold` taken from the heap and up to `trim_threshold`
    free bytes kept there, the memory is reused. Process-wide (`Trainer.fit` and `embeddings` call
    it); the cost is the step's peak memory staying resident.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
    trimmed = bool(libc.mallopt(m_trim_threshold, trim_threshold))
    return trimmed and bool(libc.mallopt(m_mmap_threshold, mmap_threshold))


@torch.no_grad()
def embeddings(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Penultimate features of all images in `x` (the output of the model's embedding layer, flattened: see
    `adapter.spec_of`), on the CPU, in eval mode."""
    spec = spec_of(model)
    device = torch.device(device) if device is not None else default_device()
    keep_freed_memory()
    with eval_mode(model):
        return torch.cat([spec.embed(model, x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input, counted for conv and linear layers.

    Reported as MACs (the convention of most pruning papers, where 1 MAC is called one FLOP).
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        total += output[0].numel() * kernel

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


DISTANCES = ("euclidean", "cosine")
TIES = ("pessimistic", "optimistic")
RECALL_LEVELS = 11  # recall 0, 0.1, ..., 1.0


def _ranking_scores(queries: torch.Tensor, db: torch.Tensor, db_sq_norms: torch.Tensor | None) -> torch.Tensor:
    """Per-query scores that order the database exactly like the chosen distance.

    Euclidean: ||d||^2 - 2 q.d (the squared distance minus the per-query constant ||q||^2).
    Cosine: -q.d on unit vectors (the cosine distance minus the constant 1), computed in float64 and
    rounded to float32, so identical unit vectors score identically wherever the matrix product puts
    them (float32 products split such ties by the column's position in the blocked kernel).
    """
    if db_sq_norms is None:
        return torch.mm(-queries, db.T).float()
    return torch.addmm(db_sq_norms, queries, db.T, alpha=-2.0)


def _prepared_features(queries: torch.Tensor, db: torch.Tensor, distance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets, on the CPU in float32 (float64 if either is float64), ready for `_ranking_scores`.

    Euclidean: both sets are shifted by the database mean, rounded per dimension to a power of two
    no larger than that dimension's spread. Distances do not change, but the scores no longer carry a
    large common offset whose float32 rounding would swamp them (offset 1e4: mAP at chance), and
    features on a coarse grid (small integers) stay exact, so their equal distances stay exact ties.
    Cosine: rows are normalised in float64 and kept in float64, so parallel vectors of any length get
    (almost always) the same unit vector and tie exactly.
    """
    dtype = torch.float64 if torch.float64 in (queries.dtype, db.dtype) else torch.float32
    queries, db = queries.detach().cpu().double(), db.detach().cpu().double()
    if distance == "cosine":
        return nn.functional.normalize(queries, dim=1), nn.functional.normalize(db, dim=1)
    mean = db.mean(0)
    spread = (db - mean).abs().amax(0)
    step = torch.exp2(torch.floor(torch.log2(spread.clamp(min=torch.finfo(torch.float64).tiny))))
    shift = torch.where(spread > 0, torch.round(mean / step) * step, db[0])
    return (queries - shift).to(dtype), (db - shift).to(dtype)


def _relevant_ranks(scores: np.ndarray, rel_start: int, rel_stop: int, ties: str) -> np.ndarray:
    """1-based rank of each relevant item in each row's ranking, ascending (shape (rows, n_relevant)).

    The relevant items are the columns rel_start:rel_stop. With S = all scores sorted and
    R = relevant scores sorted, the k-th relevant item (1-based) has rank k + (number of
    irrelevant items ranked before it) = k + #S(<= R_k) - #R(<= R_k) when ties are
    pessimistic, or with '<' instead of '<=' when optimistic. No index gather is needed:
    only a value sort of every row, a sort of the relevant block and one binary search per
    relevant item.
    """
    side = "right" if ties == "pessimistic" else "left"
    all_sorted = np.sort(scores, axis=1)
    rel_sorted = np.sort(scores[:, rel_start:rel_stop], axis=1)
    n_rel = rel_sorted.shape[1]
    k = np.arange(1, n_rel + 1)
    # #R(<= R_k) ('right') or #R(< R_k) ('left') from the tie groups of the sorted relevant row.
    if side == "right":
        group_end = np.where(np.diff(rel_sorted, axis=1, append=np.inf) != 0, k, n_rel)
        rel_before = np.minimum.accumulate(group_end[:, ::-1], axis=1)[:, ::-1]
    else:
        group_start = np.where(np.diff(rel_sorted, axis=1, prepend=-np.inf) != 0, k - 1, 0)
        rel_before = np.maximum.accumulate(group_start, axis=1)
    all_before = np.stack([np.searchsorted(s, r, side=side) for s, r in zip(all_sorted, rel_sorted)])
    return k + all_before - rel_before


def _average_precisions(ranks: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row 11-point interpolated AP, non-interpolated AP and precision@top_k from relevant ranks."""
    n_rel = ranks.shape[1]
    precision = np.arange(1, n_rel + 1) / ranks  # precision at the rank of the k-th relevant item
    # Interpolated precision at recall k/n_rel: the best precision at this or any higher recall.
    interpolated = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    # Recall level i/10 is first reached at the ceil(i * n_rel / 10)-th relevant item (level 0: the first).
    first = np.maximum(-(-np.arange(RECALL_LEVELS) * n_rel // (RECALL_LEVELS - 1)), 1) - 1
    ap_11pt = interpolated[:, first].mean(axis=1)
    return ap_11pt, precision.mean(axis=1), (ranks <= top_k).sum(axis=1) / top_k


def _check_retrieval_inputs(query_feats: torch.Tensor, query_labels: torch.Tensor, db_feats: torch.Tensor,
                            db_labels: torch.Tensor, distance: str, ties: str, top_k: int,
                            chunk_size: int) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"Unknown distance {distance!r}; use one of {DISTANCES}.")
    if ties not in TIES:
        raise ValueError(f"Unknown tie rule {ties!r}; use one of {TIES}.")
    for name, feats, labels in (("query", query_feats, query_labels), ("database", db_feats, db_labels)):
        if feats.dim() != 2 or labels.dim() != 1:
            raise ValueError(f"{name} features must be 2-D (N, D) and labels 1-D (N,); got shapes "
                             f"{tuple(feats.shape)} and {tuple(labels.shape)}.")
        if len(feats) != len(labels):
            raise ValueError(f"{name} features and labels differ in length ({len(feats)} vs {len(labels)}); "
                             "pass one label per feature row.")
        if len(feats) == 0:
            raise ValueError(f"The {name} set is empty; retrieval needs at least one {name} item.")
        if not torch.isfinite(feats).all():
            raise ValueError(f"The {name} features contain NaN or infinite values (a diverged model?); "
                             "retrieval needs finite features.")
    if query_feats.shape[1] != db_feats.shape[1]:
        raise ValueError(f"Query and database features differ in dimension ({query_feats.shape[1]} vs "
                         f"{db_feats.shape[1]}); embed both with the same model.")
    if not 1 <= top_k <= len(db_feats):
        raise ValueError(f"top_k={top_k} must lie in [1, database size {len(db_feats)}].")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}.")
    missing = sorted(set(query_labels.tolist()) - set(db_labels.tolist()))
    if missing:
        raise ValueError(f"Query classes {missing} have no item in the database, so their average precision "
                         "is undefined; use a database that covers every query class.")


@torch.no_grad()
def retrieval_metrics(query_feats: torch.Tensor, query_labels: torch.Tensor, db_feats: torch.Tensor,
                      db_labels: torch.Tensor, distance: str = "euclidean", ties: str = "pessimistic",
                      top_k: int = 100, chunk_size: int = 256) -> dict[str, float]:
    """Retrieval quality of features, as fractions in [0, 1] (multiply by 100 for the paper's %).

    Every query ranks the whole database by `distance` ('euclidean' or 'cosine');
    a database item is relevant when it has the query's label. Returns the means over queries of

    - `map_11pt`: 11-point interpolated average precision (the InDistill tables' mAP): the mean,
      over recall levels 0, 0.1, ..., 1.0, of the best precision at any recall >= that level,
      over the full ranking;
    - `map`: standard non-interpolated average precision, the mean over the relevant items of
      the precision at their ranks;
    - `precision_at_{top_k}`: the fraction of relevant items among the first `top_k` ("top-100").

    Ties (equal computed distances) are `pessimistic` by default: irrelevant items rank before
    relevant ones at the same distance, so collapsed features cannot score well (constant
    features score below chance). `optimistic` puts relevant items first, an upper bound. Equal
    distances are exact ties: parallel vectors for cosine, and equidistant points with coordinates
    on a coarse grid (e.g. small integers, at any common offset) for Euclidean. Precision does not
    depend on a common offset of the features (see `_prepared_features`); Euclidean ranks float64 input in
    float64; cosine distances are resolved to float32. A zero vector has no direction: its cosine
    distance to every item is 1. Queries are processed `chunk_size` at a time
    (memory about 12 bytes x chunk_size x database size), so no query x database matrix is held.

    >>> x = torch.tensor([[0.0], [1.0], [10.0]]); y = torch.tensor([0, 0, 1])
    >>> retrieval_metrics(x[:1], y[:1], x, y, top_k=2)["map"]
    1.0
    """
    _check_retrieval_inputs(query_feats, query_labels, db_feats, db_labels, distance, ties, top_k, chunk_size)
    query_feats, db_feats = _prepared_features(query_feats, db_feats, distance)
    query_labels, db_labels = query_labels.cpu(), db_labels.cpu()
    # Database sorted by label, so each class's relevant items are one contiguous block of columns.
    order = torch.argsort(db_labels, stable=True)
    db_feats, db_labels = db_feats[order].contiguous(), db_labels[order]
    db_sq_norms = (db_feats * db_feats).sum(1) if distance == "euclidean" else None
    classes, counts = torch.unique_consecutive(db_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    sums = np.zeros(3)
    for label, start, count in zip(classes.tolist(), starts.tolist(), counts.tolist()):
        members = torch.nonzero(query_labels == label).flatten()
        for i in range(0, len(members), chunk_size):
            scores = _ranking_scores(query_feats[members[i:i + chunk_size]], db_feats, db_sq_norms)
            ranks = _relevant_ranks(scores.numpy(), start, start + count, ties)
            sums += [values.sum() for values in _average_precisions(ranks, top_k)]
    map_11pt, map_, precision = (sums / len(query_labels)).tolist()
    return {"map_11pt": map_11pt, "map": map_, f"precision_at_{top_k}": precision}


def evaluate_retrieval(model: nn.Module, query_split: Split, db_split: Split, top_k: int = 100,
                       batch_size: int = 1024, chunk_size: int = 256,
                       device: torch.device | str | None = None) -> dict[str, dict[str, float]]:
    """Embed both splits (`embeddings`) and return `retrieval_metrics` for both distances.

    The InDistill protocol: queries = test split, database = train split. Result keys are
    'euclidean' and 'cosine' (the papers' "e" and "c"), each with fractions in [0, 1].
    """
    queries = embeddings(model, query_split.x, batch_size, device)
    db = embeddings(model, db_split.x, batch_size, device)
    return {distance: retrieval_metrics(queries, query_split.y, db, db_split.y, distance, top_k=top_k,
                                        chunk_size=chunk_size)
            for distance in DISTANCES}
