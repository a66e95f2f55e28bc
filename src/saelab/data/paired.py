"""Several activation sources read row by row together: ``[x_1 | x_2 | …]`` per row.

Used for transcoders (an MLP's input and output) and crosscoders (several layers). The members
are activation caches of hooks from one model pass, or array files with the same row count.
Caches are shuffled independently per hook, so their rows are matched by the (sequence,
position) every cached row records; array files are matched by row number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.cache.source import CacheSource
from saelab.data.arrays import ArrayFileSource
from saelab.data.base import DataError, batch_schedule

Member = ArrayFileSource | CacheSource


class PairedSource:
    """An :class:`~saelab.data.base.ActivationSource` whose rows concatenate its members' rows.

    Batch i is a pure function of (members, seed, i), so resume is exact.
    """

    def __init__(self, members: list[Member], *, seed: int = 0, shuffle: bool = True) -> None:
        if len(members) < 2:
            raise DataError("a paired source needs at least two members")
        self.members = members
        self.seed, self.shuffle = seed, shuffle
        n = {_name(m): m.n_rows for m in members}
        if len(set(n.values())) != 1:
            raise DataError(f"paired sources hold different row counts {n}; pair caches of one "
                            "model pass (saelab cache with several --hook) or arrays of equal length")
        self.n_rows = members[0].n_rows
        self._maps: list[np.ndarray | None] = [None]
        self._maps += [_row_map(members[0], m) for m in members[1:]]

    @property
    def widths(self) -> list[int]:
        return [m.d_in for m in self.members]

    @property
    def d_in(self) -> int:
        return sum(self.widths)

    def fingerprint(self) -> dict[str, Any]:
        """The members' fingerprints, in order (resume refuses changed data in any of them)."""
        return {"kind": "paired", "members": [m.fingerprint() for m in self.members]}

    @property
    def hooks(self) -> list[str]:
        """The members' hook names (caches), or "" (arrays)."""
        return [m.manifest.hook if isinstance(m, CacheSource) else "" for m in self.members]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows (global row numbers of the first member) of every member, side by side."""
        parts = []
        for member, mapping in zip(self.members, self._maps, strict=True):
            picked = rows if mapping is None else mapping[rows]
            parts.append(_take(member, picked))
        return np.concatenate(parts, axis=1)

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        if batch_size > self.n_rows:
            raise DataError(f"the paired sources have {self.n_rows} rows, fewer than one batch "
                            f"({batch_size}); lower the batch size or cache more tokens")
        order_epoch, order = -1, np.arange(self.n_rows)
        for epoch, lo, hi in batch_schedule(self.n_rows, batch_size, start_batch):
            if epoch != order_epoch and self.shuffle:
                order_epoch = epoch
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            yield torch.from_numpy(self.take(np.sort(order[lo:hi])))

    def sample(self, n: int) -> Tensor:
        rows = np.sort(np.random.default_rng([self.seed, 10**9]).choice(
            self.n_rows, min(n, self.n_rows), replace=False))
        return torch.from_numpy(self.take(rows))


def _name(member: Member) -> str:
    return str(member.path)


def _take(member: Member, rows: np.ndarray) -> np.ndarray:
    if isinstance(member, CacheSource):
        return member.take(rows)
    return np.asarray(member.array[rows], dtype=np.float32)


def _row_map(first: Member, other: Member) -> np.ndarray | None:
    """mapping[r] = the row of ``other`` holding the same (sequence, position) as row r of
    ``first``; None when rows correspond by number (array files)."""
    if not isinstance(first, CacheSource) or not isinstance(other, CacheSource):
        if isinstance(first, CacheSource) != isinstance(other, CacheSource):
            raise DataError(f"cannot pair the cache {first.path if isinstance(first, CacheSource) else other.path} "
                            "with an array file: pair caches with caches, arrays with arrays")
        return None
    a, b = first.manifest, other.manifest
    if a.tokens_sha256 != b.tokens_sha256 or a.context_size != b.context_size:
        raise DataError(f"caches {first.path} and {other.path} were not made from the same "
                        "inputs (their token files differ); cache all hooks in one run")
    key_a = _keys(first)
    key_b = _keys(other)
    order_a, order_b = np.argsort(key_a, kind="stable"), np.argsort(key_b, kind="stable")
    if not np.array_equal(key_a[order_a], key_b[order_b]):
        raise DataError(f"caches {first.path} and {other.path} kept different token positions "
                        "(max_norm_multiple drops outliers per hook); rebuild them with "
                        "max_norm_multiple = 0 to pair them")
    mapping = np.empty(first.n_rows, dtype=np.int64)
    mapping[order_a] = order_b
    return mapping


def _keys(cache: CacheSource) -> np.ndarray:
    pos = cache.positions(np.arange(cache.n_rows))
    return pos[:, 0] * cache.manifest.context_size + pos[:, 1]


def open_paired(paths: list[str | Path], *, seed: int = 0, shuffle: bool = True,
                verify: bool = True) -> PairedSource:
    """Open each path as a cache folder or an array file and pair them."""
    members: list[Member] = []
    for path in map(Path, paths):
        if path.is_dir():
            members.append(CacheSource(path, seed=seed, verify=verify))
        else:
            members.append(ArrayFileSource(path, seed=seed, check=verify))
    return PairedSource(members, seed=seed, shuffle=shuffle)
