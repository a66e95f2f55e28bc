"""Streaming per-latent statistics and example selection, with memory independent of tokens.

Every structure here sees sparse codes as (row, latent, value) entries, batch by batch:

- :class:`LatentStats`: firing count, sum and max per latent, and a fine log-spaced histogram
  (``FINE_BINS`` bins per decade over [1e-6, 1e6]) from which the page's histogram and the
  equal-count quantile edges are read.
- :class:`TopPerGroup`: the exact top ``n`` entries per group by a score, one per context
  (the entry with the highest score of its context). A candidate is only looked at when it
  beats its group's current n-th score, so after the first batches almost nothing is merged.
  Used with the activation as score (top contexts) and with a random priority per entry
  (uniform samples per quantile bin: the n smallest priorities are a uniform sample without
  replacement).
- :class:`CodesFile`: the codes themselves in CSR form on disk (values, latent ids, row
  offsets), written append-only and truncated back on resume, so the later passes and the
  window look-ups never re-run the model or the SAE.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

LOG_MIN, LOG_MAX, FINE_BINS = -6.0, 6.0, 20  # fine histogram: 20 bins per decade
N_FINE = int((LOG_MAX - LOG_MIN) * FINE_BINS)


def fine_bin(values: np.ndarray) -> np.ndarray:
    """Fine log-bin index of positive values (clipped to the ends)."""
    logs = np.log10(np.maximum(values, 10.0 ** LOG_MIN))
    return np.clip(((logs - LOG_MIN) * FINE_BINS).astype(np.int64), 0, N_FINE - 1)


def fine_edges() -> np.ndarray:
    """The N_FINE + 1 bin edges (activation values) of the fine histogram."""
    return 10.0 ** (LOG_MIN + np.arange(N_FINE + 1) / FINE_BINS)


class LatentStats:
    """Count, sum, max and fine log-histogram of every latent's positive codes."""

    def __init__(self, n_latents: int) -> None:
        self.n_latents = n_latents
        self.n_rows = 0
        self.count = np.zeros(n_latents, dtype=np.int64)
        self.total = np.zeros(n_latents, dtype=np.float64)
        self.max = np.zeros(n_latents, dtype=np.float32)
        self.hist = np.zeros((n_latents, N_FINE), dtype=np.int64)

    def update(self, n_rows: int, latents: np.ndarray, values: np.ndarray) -> None:
        self.n_rows += n_rows
        self.count += np.bincount(latents, minlength=self.n_latents)
        self.total += np.bincount(latents, weights=values, minlength=self.n_latents)
        np.maximum.at(self.max, latents, values)
        np.add.at(self.hist.reshape(-1), latents * N_FINE + fine_bin(values), 1)

    def quantile_edges(self, n_bins: int) -> np.ndarray:
        """(M, n_bins − 1) activation values splitting each latent's firing codes into
        ``n_bins`` equal-count bins, read from the fine histogram (log-interpolated within a
        fine bin; exact to 1/FINE_BINS of a decade)."""
        cum = np.cumsum(self.hist, axis=1)
        edges = fine_edges()
        out = np.zeros((self.n_latents, max(0, n_bins - 1)), dtype=np.float64)
        for j in range(1, n_bins):
            target = self.count * (j / n_bins)
            idx = np.minimum((cum < target[:, None]).sum(1), N_FINE - 1)
            below = np.where(idx > 0, cum[np.arange(self.n_latents), idx - 1], 0)
            inside = np.maximum(self.hist[np.arange(self.n_latents), idx], 1)
            frac = np.clip((target - below) / inside, 0.0, 1.0)
            out[:, j - 1] = edges[idx] * (edges[idx + 1] / edges[idx]) ** frac
        return np.minimum(out, self.max[:, None])

    def state(self) -> dict[str, np.ndarray]:
        return {"n_rows": np.array(self.n_rows), "count": self.count, "total": self.total,
                "max": self.max, "hist": self.hist}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.n_rows = int(state["n_rows"])
        self.count, self.total = state["count"], state["total"]
        self.max, self.hist = state["max"], np.ascontiguousarray(state["hist"])


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of integer keys, by one plain sort of (key, index)
    packed in an int64 where both fit (several times faster than an argsort)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    shift = max(1, (n - 1).bit_length())
    if int(keys.min()) >= 0 and int(keys.max()) < 2 ** (62 - shift):
        return np.sort((keys.astype(np.int64) << shift) | np.arange(n)) & ((1 << shift) - 1)
    return np.argsort(keys, kind="stable")


def _first_of_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of every (a, b) pair (non-negative ints)."""
    n = len(a)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pair = a.astype(np.int64) * (int(b.max()) + 1) + b
    order = stable_argsort(pair)
    pair_sorted = pair[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = pair_sorted[1:] != pair_sorted[:-1]
    first = order[starts]
    first.sort()
    return first


class TopPerGroup:
    """Exact top-``n`` entries per group by a non-negative float32 score, at most one entry per
    context (the best-scoring entry of each (group, context)); equal scores are ordered by
    context, then position, so the result never depends on the order entries arrive in.

    Candidates that beat their group's current n-th score are buffered and merged in one sort
    once the buffer holds about as many entries as the table (``flush``): the threshold a
    candidate is checked against may be stale (too low) in between, which only lets more
    candidates through, never drops one that belongs in the top n. Call :meth:`flush` (or read
    through :meth:`entries` / :meth:`state`, which do) before reading the arrays.
    """

    def __init__(self, n_groups: int, n: int, flush_at: int = 0) -> None:
        self.n_groups, self.n = n_groups, n
        self.score = np.full((n_groups, n), -np.inf, dtype=np.float32)
        self.seq = np.full((n_groups, n), -1, dtype=np.int64)
        self.pos = np.full((n_groups, n), -1, dtype=np.int64)
        self.value = np.zeros((n_groups, n), dtype=np.float32)
        self.flush_at = flush_at or max(1 << 15, n_groups * n)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._n_pending = 0

    @property
    def threshold(self) -> np.ndarray:
        """Each group's n-th best score as of the last flush (−inf while not full)."""
        return self.score[:, -1]

    def offer(self, group: np.ndarray, score: np.ndarray, seq: np.ndarray, pos: np.ndarray,
              value: np.ndarray) -> None:
        # ties with the n-th best pass: the merge orders them by (context, position)
        keep = score >= self.score[group, -1]
        if not keep.any():
            return
        self._pending.append((group[keep], np.asarray(score[keep], dtype=np.float32),
                              seq[keep], pos[keep], value[keep]))
        self._n_pending += int(keep.sum())
        if self._n_pending >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        """Merge the buffered candidates into the table (one sort of table + buffer)."""
        if not self._pending:
            return
        held = np.isfinite(self.score)
        g = np.concatenate([np.nonzero(held)[0], *(p[0] for p in self._pending)])
        s = np.concatenate([self.score[held], *(p[1] for p in self._pending)])
        q = np.concatenate([self.seq[held], *(p[2] for p in self._pending)])
        p_ = np.concatenate([self.pos[held], *(p[3] for p in self._pending)])
        v = np.concatenate([self.value[held], *(p[4] for p in self._pending)])
        self._pending, self._n_pending = [], 0
        # one int64 key sorts by group, then by descending score (the bits of a non-negative
        # float32 are ordered like its value); equal keys are rare and then ordered by context,
        # so the result never depends on the order candidates arrived in (a resumed build
        # equals an uninterrupted one)
        key = (g.astype(np.int64) << 32) | (0xFFFFFFFF - s.view(np.uint32).astype(np.int64))
        order = stable_argsort(key)
        tied = np.diff(key[order]) == 0
        if tied.any():  # order each run of equal keys by (context, position), in place
            at = np.unique(np.concatenate([np.nonzero(tied)[0], np.nonzero(tied)[0] + 1]))
            sub = order[at]
            order[at] = sub[np.lexsort((p_[sub], q[sub], key[sub]))]
        g_sorted, q_sorted = g[order], q[order]
        first = _first_of_pairs(g_sorted, q_sorted)  # the best entry of every (group, context)
        g_sorted, order = g_sorted[first], order[first]
        change = np.ones(len(g_sorted), dtype=bool)
        change[1:] = g_sorted[1:] != g_sorted[:-1]
        idx = np.arange(len(g_sorted))
        rank = idx - np.maximum.accumulate(np.where(change, idx, 0))
        top = rank < self.n
        slot = g_sorted[top] * self.n + rank[top]
        keep = order[top]
        for table, fill, values in ((self.score, -np.inf, s), (self.seq, -1, q),
                                    (self.pos, -1, p_), (self.value, 0, v)):
            table.fill(fill)
            table.reshape(-1)[slot] = values[keep]

    def entries(self, group: int) -> list[tuple[int, int, float]]:
        """(sequence, position, value) of a group's kept entries, best score first."""
        self.flush()
        valid = np.isfinite(self.score[group])
        return [(int(a), int(b), float(c)) for a, b, c in
                zip(self.seq[group][valid], self.pos[group][valid], self.value[group][valid],
                    strict=True)]

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        self.flush()
        return {f"{prefix}_score": self.score, f"{prefix}_seq": self.seq,
                f"{prefix}_pos": self.pos, f"{prefix}_value": self.value}

    def load(self, state: dict[str, np.ndarray], prefix: str) -> None:
        self.score = state[f"{prefix}_score"].astype(np.float32)
        self.seq, self.pos = state[f"{prefix}_seq"], state[f"{prefix}_pos"]
        self.value = state[f"{prefix}_value"]
        self._pending, self._n_pending = [], 0


class CodesFile:
    """Sparse codes of every row on disk: ``values.f32``, ``latents.i32`` (sorted within each
    row), ``offsets.i64`` (row starts; n_rows + 1 entries) and ``seqpos.i64`` (n_rows × 2)."""

    NAMES = ("values.f32", "latents.i32", "offsets.i64", "seqpos.i64")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / n for n in self.NAMES]

    def sizes(self) -> list[int]:
        return [p.stat().st_size if p.exists() else 0 for p in self.paths]

    def truncate(self, sizes: list[int]) -> None:
        """Cut every file back to the sizes of the last saved state (drops a partial batch)."""
        for path, size in zip(self.paths, sizes, strict=True):
            with open(path, "ab") as fh:
                fh.truncate(size)

    def append(self, row_ids: np.ndarray, latents: np.ndarray, values: np.ndarray,
               n_rows: int, seqpos_N2: np.ndarray, nnz_before: int) -> None:
        """Entries of one batch, sorted by (row, latent); ``row_ids`` are batch-local."""
        keys = row_ids.astype(np.int64) * (int(latents.max(initial=0)) + 1) + latents
        if not (np.diff(keys) > 0).all():  # sparse_entries hands them out sorted already
            order = stable_argsort(keys)
            latents, values = latents[order], values[order]
        counts = np.bincount(row_ids, minlength=n_rows)
        offsets = nnz_before + np.cumsum(counts)
        if nnz_before == 0 and self.sizes()[2] == 0:
            offsets = np.concatenate([[0], offsets])
        for path, arr in zip(self.paths, (values.astype(np.float32),
                                          latents.astype(np.int32),
                                          offsets.astype(np.int64),
                                          seqpos_N2.astype(np.int64)), strict=True):
            with open(path, "ab") as fh:
                fh.write(np.ascontiguousarray(arr).tobytes())

    def n_rows(self) -> int:
        return max(0, self.sizes()[2] // 8 - 1)

    def chunks(self, rows_per_chunk: int = 65536
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Sequential ``(first_row, offsets, latents, values, seqpos)`` chunks, read with plain
        file reads (not memory maps), so memory stays one chunk whatever the file size."""
        n_rows = self.n_rows()
        handles = [open(p, "rb") for p in self.paths]  # noqa: SIM115 (closed below)
        try:
            fv, fl, fo, fs = handles
            for lo in range(0, n_rows, rows_per_chunk):
                hi = min(n_rows, lo + rows_per_chunk)
                fo.seek(lo * 8)
                offsets = np.fromfile(fo, dtype=np.int64, count=hi - lo + 1)
                a, b = int(offsets[0]), int(offsets[-1])
                fl.seek(a * 4)
                fv.seek(a * 4)
                fs.seek(lo * 16)
                yield (lo, offsets, np.fromfile(fl, dtype=np.int32, count=b - a),
                       np.fromfile(fv, dtype=np.float32, count=b - a),
                       np.fromfile(fs, dtype=np.int64, count=2 * (hi - lo)).reshape(-1, 2))
        finally:
            for fh in handles:
                fh.close()

    def open(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values, latents, offsets, seqpos) memory-mapped."""
        values = np.memmap(self.paths[0], dtype=np.float32, mode="r")
        latents = np.memmap(self.paths[1], dtype=np.int32, mode="r")
        offsets = np.memmap(self.paths[2], dtype=np.int64, mode="r")
        seqpos = np.memmap(self.paths[3], dtype=np.int64, mode="r").reshape(-1, 2)
        return values, latents, offsets, seqpos


def expand_ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every index of the ranges [starts[i], stops[i]) in order, and for each, its range i."""
    lengths = np.maximum(stops - starts, 0)
    which = np.repeat(np.arange(len(starts)), lengths)
    first = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return first + np.arange(len(which)), which


def gather_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry indices of the given rows (CSR) and, for each entry, its position in ``rows``."""
    return expand_ranges(offsets[rows], offsets[rows + 1])


def log_rebin(hist_lo: int, counts: list[int], n_bins: int = 40) -> tuple[list[float], list[int]]:
    """Merge fine-bin counts into about ``n_bins`` bins over the populated range; returns
    (edges, counts) for plotting."""
    if not counts:
        return [], []
    edges = fine_edges()
    group = max(1, math.ceil(len(counts) / n_bins))
    merged = [int(sum(counts[i:i + group])) for i in range(0, len(counts), group)]
    out_edges = [float(edges[hist_lo + i]) for i in range(0, len(counts), group)]
    out_edges.append(float(edges[min(N_FINE, hist_lo + len(counts))]))
    return out_edges, merged
