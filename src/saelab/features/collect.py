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
        flat = latents * N_FINE + fine_bin(values)
        self.hist += np.bincount(flat, minlength=self.n_latents * N_FINE).reshape(
            self.n_latents, N_FINE)

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
        self.max, self.hist = state["max"], state["hist"]


class TopPerGroup:
    """Exact top-``n`` entries per group by score, at most one entry per context."""

    def __init__(self, n_groups: int, n: int) -> None:
        self.n_groups, self.n = n_groups, n
        self.score = np.full((n_groups, n), -np.inf, dtype=np.float64)
        self.seq = np.full((n_groups, n), -1, dtype=np.int64)
        self.pos = np.full((n_groups, n), -1, dtype=np.int64)
        self.value = np.zeros((n_groups, n), dtype=np.float32)

    @property
    def threshold(self) -> np.ndarray:
        return self.score[:, -1]

    def offer(self, group: np.ndarray, score: np.ndarray, seq: np.ndarray, pos: np.ndarray,
              value: np.ndarray) -> None:
        keep = score > self.threshold[group]
        if not keep.any():
            return
        group, score, seq, pos, value = group[keep], score[keep], seq[keep], pos[keep], value[keep]
        touched = np.unique(group)
        old_valid = np.isfinite(self.score[touched])
        old_group = np.repeat(touched, self.n).reshape(len(touched), self.n)[old_valid]
        g = np.concatenate([old_group, group])
        s = np.concatenate([self.score[touched][old_valid], score])
        q = np.concatenate([self.seq[touched][old_valid], seq])
        p = np.concatenate([self.pos[touched][old_valid], pos])
        v = np.concatenate([self.value[touched][old_valid], value])
        # one entry per (group, context): the best-scoring one
        order = np.lexsort((-s, q, g))
        g, s, q, p, v = g[order], s[order], q[order], p[order], v[order]
        first = np.ones(len(g), dtype=bool)
        first[1:] = (g[1:] != g[:-1]) | (q[1:] != q[:-1])
        g, s, q, p, v = g[first], s[first], q[first], p[first], v[first]
        order = np.lexsort((-s, g))
        g, s, q, p, v = g[order], s[order], q[order], p[order], v[order]
        starts = np.searchsorted(g, g, side="left")
        rank = np.arange(len(g)) - starts
        top = rank < self.n
        self.score[touched] = -np.inf
        self.seq[touched] = -1
        self.pos[touched] = -1
        self.value[touched] = 0
        g, r = g[top], rank[top]
        self.score[g, r], self.seq[g, r], self.pos[g, r], self.value[g, r] = (
            s[top], q[top], p[top], v[top])

    def entries(self, group: int) -> list[tuple[int, int, float]]:
        """(sequence, position, value) of a group's kept entries, best score first."""
        valid = np.isfinite(self.score[group])
        return [(int(a), int(b), float(c)) for a, b, c in
                zip(self.seq[group][valid], self.pos[group][valid], self.value[group][valid],
                    strict=True)]

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_score": self.score, f"{prefix}_seq": self.seq,
                f"{prefix}_pos": self.pos, f"{prefix}_value": self.value}

    def load(self, state: dict[str, np.ndarray], prefix: str) -> None:
        self.score, self.seq = state[f"{prefix}_score"], state[f"{prefix}_seq"]
        self.pos, self.value = state[f"{prefix}_pos"], state[f"{prefix}_value"]


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
        order = np.lexsort((latents, row_ids))
        counts = np.bincount(row_ids, minlength=n_rows)
        offsets = nnz_before + np.cumsum(counts)
        if nnz_before == 0 and self.sizes()[2] == 0:
            offsets = np.concatenate([[0], offsets])
        for path, arr in zip(self.paths, (values[order].astype(np.float32),
                                          latents[order].astype(np.int32),
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


def gather_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry indices of the given rows (CSR) and, for each entry, its position in ``rows``."""
    starts, stops = offsets[rows], offsets[rows + 1]
    lengths = stops - starts
    which = np.repeat(np.arange(len(rows)), lengths)
    first = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return first + np.arange(int(lengths.sum())), which


def lookup(values: np.ndarray, latents: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
           query_latents: np.ndarray, n_latents: int) -> np.ndarray:
    """The code of ``query_latents[i]`` at row ``rows[i]`` (0 where it did not fire; NaN where
    the row is −1, a position that was not counted)."""
    out = np.full(len(rows), np.nan, dtype=np.float32)
    valid = rows >= 0
    if not valid.any():
        return out
    unique_rows, inverse = np.unique(rows[valid], return_inverse=True)
    entry, which = gather_rows(offsets, unique_rows)
    keys = which.astype(np.int64) * n_latents + latents[entry]  # sorted: rows, then latents
    queries = inverse.astype(np.int64) * n_latents + query_latents[valid]
    at = np.minimum(np.searchsorted(keys, queries), max(0, len(keys) - 1))
    hit = (keys[at] == queries) if len(keys) else np.zeros(len(queries), dtype=bool)
    got = np.where(hit, values[entry[at]] if len(keys) else 0.0, 0.0)
    out[valid] = got
    return out


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
