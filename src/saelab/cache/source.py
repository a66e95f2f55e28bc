"""Read an activation cache for training: memory-mapped shards, checked before use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.cache.format import (
    CacheError,
    CacheManifest,
    check_shapes,
    read_manifest,
    verify_checksums,
)
from saelab.data.base import batch_schedule


class CacheSource:
    """An :class:`~saelab.data.base.ActivationSource` over a finished activation cache.

    The cache is already uniformly shuffled, so the first epoch reads rows in stored order
    (sequential, fast memory-mapped reads). Later epochs, when ``shuffle`` is on, use a seeded
    permutation of all rows, read in sorted order within each batch. Batch i is a pure function
    of (cache, seed, i), so a resumed training run is exact.

    Opening checks every file's shape and (with ``verify``) its sha256, and raises CacheError
    naming any corrupt shard before training reads from it.
    """

    def __init__(self, path: str | Path, *, seed: int = 0, shuffle: bool = True,
                 verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest: CacheManifest = read_manifest(self.path)
        check_shapes(self.path, self.manifest)
        if verify:
            verify_checksums(self.path, self.manifest)
        self.seed = seed
        self.shuffle = shuffle
        self._acts = [np.load(self.path / s.acts_file, mmap_mode="r") for s in self.manifest.shards]
        self._index = [np.load(self.path / s.index_file, mmap_mode="r")
                       for s in self.manifest.shards]
        self._starts = np.concatenate([[0], np.cumsum([s.rows for s in self.manifest.shards])])

    @property
    def d_in(self) -> int:
        return self.manifest.width

    @property
    def n_rows(self) -> int:
        return self.manifest.n_rows

    def fingerprint(self) -> dict[str, Any]:
        """The sha256 checksums the manifest holds for every shard and the tokens, hashed."""
        doc = [[s.acts_sha256, s.index_sha256, s.rows] for s in self.manifest.shards]
        digest = hashlib.sha256(json.dumps([doc, self.manifest.tokens_sha256]).encode())
        return {"kind": "cache", "rows": self.n_rows, "width": self.d_in,
                "digest": digest.hexdigest()}

    @property
    def tokens(self) -> np.ndarray:
        """Token ids of every context (n_contexts × context_size), memory-mapped."""
        return np.load(self.path / self.manifest.tokens_file, mmap_mode="r")

    # ------------------------------------------------------------------ row access

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the cache as float32 (may span shards)."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        if stop <= self._starts[first + 1]:  # within one shard: one slice, one conversion
            lo = start - int(self._starts[first])
            return np.array(self._acts[first][lo:lo + stop - start], dtype=np.float32)
        return self._gather(self._acts, np.arange(start, stop)).astype(np.float32, copy=False)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given global rows (any order) as float32."""
        return self._gather(self._acts, np.asarray(rows, dtype=np.int64)).astype(np.float32,
                                                                                copy=False)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """(sequence, position) of the given global rows, int64 (len(rows) × 2)."""
        return self._gather(self._index, np.asarray(rows, dtype=np.int64))

    def _gather(self, arrays: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"rows must be in [0, {self.n_rows}) for cache {self.path}")
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((rows.size, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for shard in np.unique(shard_of):
            picked = shard_of == shard
            local = rows[picked] - self._starts[shard]
            out[picked] = arrays[shard][local]
        return out

    # ------------------------------------------------------------------ ActivationSource

    def _epoch_rows(self, epoch: int) -> np.ndarray | None:
        """The row order of an epoch; None means stored order."""
        if epoch == 0 or not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        if batch_size > self.n_rows:
            raise CacheError(f"cache {self.path} has {self.n_rows} rows, fewer than one batch "
                             f"({batch_size}); lower the batch size or cache more tokens")
        order_epoch, order = -1, None
        for epoch, lo, hi in batch_schedule(self.n_rows, batch_size, start_batch):
            if epoch != order_epoch:
                order_epoch, order = epoch, self._epoch_rows(epoch)
            rows = self.read_rows(lo, hi) if order is None else self.take(np.sort(order[lo:hi]))
            yield torch.from_numpy(rows)

    def sample(self, n: int) -> Tensor:
        """The first n rows: the cache is uniformly shuffled, so they are a uniform sample."""
        return torch.from_numpy(self.read_rows(0, min(n, self.n_rows)))
