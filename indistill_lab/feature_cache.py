"""Teacher targets computed once per training example and looked up by index, so a distillation
epoch costs about as much as a plain student epoch.

Without augmentation a frozen teacher's features for example `i` are the same in every epoch,
yet the naive loop recomputes them for every batch. A `Loader` remembers which example indices
it yielded last (`IndexedLoader` adds short epochs); `FeatureCache` wraps a `(x, paths) -> features` function
(a `TeacherFeatures` callable, as `CurriculumObjective` takes), computes the features of the whole
training split on first use of each path and afterwards answers by slicing.

    loader = IndexedLoader(train, 128, seed=0)
    cache = FeatureCache(sources.features, loader)
    objective = CurriculumObjective(curriculum, sources, student, teacher_features=cache)

Correctness does not rest on call order: each lookup checks that the batch it is asked about is
exactly the batch the loader yielded (same rows, same values); any other input (a probe batch,
an augmented batch) is computed directly and counted in `misses`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .curriculum import TeacherFeatures
from .data import BatchTransform, Loader, Split


class IndexedLoader(Loader):
    """A `Loader` (which records the example indices of the batch it last yielded in `indices`)
    whose epochs can be capped at `epoch_size` examples.

    Each epoch takes the first `epoch_size` of that epoch's seeded permutation, so short "epochs"
    still visit the whole split over time (used to fit a curriculum counted in epochs into a small
    CPU budget).
    """

    def __init__(self, data: Split, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                 transform: BatchTransform | None = None, drop_last: bool = False,
                 epoch_size: int | None = None) -> None:
        super().__init__(data, batch_size, shuffle, seed, transform, drop_last)
        if epoch_size is not None and not 0 < epoch_size:
            raise ValueError(f"epoch_size must be a positive number of examples or None (a full pass), "
                             f"got {epoch_size}.")
        self.epoch_size = min(epoch_size, len(data)) if epoch_size is not None else len(data)

    @property
    def examples_per_epoch(self) -> int:
        return self.epoch_size


class FeatureCache:
    """A `TeacherFeatures` callable that answers from per-example tables of the teacher's features.

    `compute(x, paths)` must be deterministic for a given input (a frozen teacher in eval mode).
    Tables are built lazily, one full pass over `loader.data` per new set of paths, in chunks of
    `chunk_size`; `retain(paths)` frees the others. The loader must not augment (the targets of
    an augmented image are not the cached ones): that is refused up front.
    """

    def __init__(self, compute: TeacherFeatures, loader: IndexedLoader, chunk_size: int = 1024) -> None:
        if not isinstance(loader, IndexedLoader):
            raise TypeError(f"FeatureCache needs an IndexedLoader (it reports batch indices), got "
                            f"{type(loader).__name__}; build the loader with indistill_lab.feature_cache.IndexedLoader.")
        if loader.transform is not None:
            raise ValueError("The loader augments its batches, so the teacher's targets change every epoch and "
                             "cannot be cached; train without the cache (teacher_features=None) or without "
                             "augmentation.")
        self.compute, self.loader, self.chunk_size = compute, loader, chunk_size
        self.tables: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def prefetch(self, paths: Sequence[str]) -> None:
        """Build the tables of the `paths` not cached yet, in one pass over the data."""
        missing = [p for p in dict.fromkeys(paths) if p not in self.tables]
        if not missing:
            return
        data = self.loader.data.x
        chunks: dict[str, list[torch.Tensor]] = {p: [] for p in missing}
        with torch.no_grad():
            for start in range(0, len(data), self.chunk_size):
                feats = self.compute(data[start:start + self.chunk_size], missing)
                for p in missing:
                    chunks[p].append(feats[p].detach().cpu())
        self.tables.update({p: torch.cat(c) for p, c in chunks.items()})

    def retain(self, paths: Sequence[str]) -> None:
        """Free every table except those of `paths` (memory: N x feature size x 4 bytes per table)."""
        self.tables = {p: t for p, t in self.tables.items() if p in set(paths)}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tables.values())

    def _is_current_batch(self, x: torch.Tensor) -> bool:
        idx = self.loader.indices
        return (idx is not None and len(idx) == len(x)
                and torch.equal(x.detach().cpu(), self.loader.data.x[idx]))

    def __call__(self, x: torch.Tensor, paths: Sequence[str]) -> Mapping[str, torch.Tensor]:
        if not self._is_current_batch(x):
            self.misses += 1
            return self.compute(x, paths)
        self.hits += 1
        self.prefetch(paths)
        idx = self.loader.indices
        return {p: self.tables[p][idx].to(x.device) for p in paths}
