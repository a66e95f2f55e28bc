"""A feature store's example windows: sampled, laid out and written, in sequential passes.

After the encode pass (``build.py``) has kept every latent's exact top contexts and saved the
sparse codes to disk, this module

1. **samples** (:func:`sample_pass`, one read of the codes): a uniform sample of codes from each
   equal-count activation bin of every latent, and a pool of random windows with the latents
   that fire anywhere in each;
2. **lays out** (:func:`select`) every chosen window in storage order (by latent, kind, then
   display order) with its span in its context;
3. **reads the codes of the windows** (:func:`window_codes`, one more read of the codes): per
   chunk of rows, each window's codes of its own latent are one range of the chunk's entries
   sorted by (context, latent, position), so only the nonzero codes are ever touched; a bitmask
   per window records which of its tokens were encoded at all;
4. **writes** (:func:`write_examples`) one ``examples`` row per latent with every column a packed
   array, and one ``contexts`` row per context a window comes from.

Memory is one chunk of codes plus arrays sized by the number of windows (latents × examples per
latent), never by the number of tokens.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from saelab.features.collect import (
    CodesFile,
    TopPerGroup,
    expand_ranges,
    gather_rows,
    stable_argsort,
)

#: rows of saved codes read at once by the sample and window passes
CHUNK_ROWS = 1 << 14

KINDS = ("top", "quantile", "random")  # the codes of the ``kind`` column, in display order
TOP, QUANTILE, RANDOM = range(3)


class Progress(Protocol):
    def progress(self, stage: str, done: int, total: int | None, start: float,
                 unit: str = "rows", force: bool = False) -> None: ...


@dataclass
class WindowShape:
    """Tokens shown before and after an example's centre token; contexts' length."""

    before: int
    after: int
    size: int

    def span(self, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, stop) of the windows around ``centre``, clipped to the context."""
        return (np.maximum(0, centre - self.before),
                np.minimum(self.size, centre + self.after + 1))


def _sorted_rows(seqpos: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, keys in that order) of a chunk's rows by token key ``sequence·size + position``."""
    keys = seqpos[:, 0] * size + seqpos[:, 1]
    order = stable_argsort(keys)
    return order, keys[order]


# ---------------------------------------------------------------------------- 1. sample


def sample_pass(codes: CodesFile, edges: np.ndarray, n_contexts: int, shape: WindowShape, *,
                per_bin: int, n_random: int, seed: int, say: Progress
                ) -> tuple[TopPerGroup, np.ndarray, np.ndarray]:
    """One sequential read of the saved codes for the two unbiased samples:

    - per (latent, equal-count bin), ``per_bin`` codes, one per context: those with the largest
      random priorities, a uniform sample without replacement;
    - a pool of random windows ((sequence, centre) rows) and, per pool window and latent,
      whether the latent fires anywhere in it (pool × latents booleans).
    """
    M, n_bins = edges.shape[0], edges.shape[1] + 1
    sample = TopPerGroup(M * n_bins, max(1, per_bin))
    rng = np.random.default_rng(seed)
    size = shape.size
    pool_size = min(max(8 * n_random, 256), n_contexts * size) if n_random else 0
    pool_rng = np.random.default_rng([seed, 1])
    pool = np.stack([pool_rng.integers(0, n_contexts, pool_size),
                     pool_rng.integers(0, size, pool_size)], 1)
    lo, hi = shape.span(pool[:, 1])
    first_key, stop_key = pool[:, 0] * size + lo, pool[:, 0] * size + hi
    fired = np.zeros((pool_size, M), dtype=bool)
    n_rows, start = codes.n_rows(), time.perf_counter()
    for row0, offsets, latents, values, seqpos in codes.chunks(max(1, CHUNK_ROWS // 8)):
        lat = latents.astype(np.int64)
        if per_bin:
            row = np.repeat(np.arange(len(seqpos)), np.diff(offsets))
            bins = (values[:, None] > edges[lat]).sum(axis=1)
            sample.offer(lat * n_bins + bins, rng.random(len(lat), dtype=np.float32),
                         seqpos[row, 0], seqpos[row, 1], values)
        if pool_size:
            order, keys = _sorted_rows(seqpos, size)
            rows, window = expand_ranges(np.searchsorted(keys, first_key),
                                         np.searchsorted(keys, stop_key))
            entry, which = gather_rows(offsets - offsets[0], order[rows])
            fired[window[which], lat[entry]] = True
        say.progress("sample", row0 + len(seqpos), n_rows, start)
    sample.flush()
    return sample, pool, fired


def random_picks(fired: np.ndarray, n_latents: int, n_random: int) -> np.ndarray:
    """Per latent, the pool indices of up to ``n_random`` windows where it never fires (−1 where
    fewer exist): the first such windows in the pool's random order."""
    if n_random == 0 or fired.shape[0] == 0:
        return np.full((n_latents, n_random), -1, dtype=np.int64)
    order = np.argsort(fired, axis=0, kind="stable")[:n_random].T  # (M, n): unfired first
    ok = ~fired[order, np.arange(n_latents)[:, None]]
    return np.where(ok, order, -1)


# ---------------------------------------------------------------------------- 2. lay out


@dataclass
class Windows:
    """Every selected window, in storage order: by latent, then kind (top, quantile, random),
    then display order (top: by rank; quantile: highest bin first, then rank; random: pool
    order)."""

    latent: np.ndarray  # int64
    kind: np.ndarray  # int64 code into KINDS
    bin: np.ndarray  # int64
    seq: np.ndarray  # int64 context
    pos: np.ndarray  # int64 centre
    value: np.ndarray  # float32 code at the centre
    start: np.ndarray  # int64 window start in its context
    length: np.ndarray  # int64 window length


def select(top: TopPerGroup, quant: TopPerGroup | None, picks: np.ndarray, pool: np.ndarray,
           n_bins: int, shape: WindowShape) -> Windows:
    """The windows of the top contexts, the quantile samples and the random picks."""
    top.flush()
    parts: list[tuple[np.ndarray, ...]] = []
    lat, rank = np.nonzero(np.isfinite(top.score))
    parts.append((lat, np.full_like(lat, TOP), np.zeros_like(lat), rank, top.seq[lat, rank],
                  top.pos[lat, rank], top.value[lat, rank]))
    if quant is not None:
        quant.flush()
        group, rank = np.nonzero(np.isfinite(quant.score))
        parts.append((group // n_bins, np.full_like(group, QUANTILE), group % n_bins, rank,
                      quant.seq[group, rank], quant.pos[group, rank], quant.value[group, rank]))
    lat, slot = np.nonzero(picks >= 0)
    window = picks[lat, slot]
    parts.append((lat, np.full_like(lat, RANDOM), np.zeros_like(lat), slot, pool[window, 0],
                  pool[window, 1], np.zeros(len(lat), dtype=np.float32)))
    latent, kind, bins, rank, seq, pos, value = (np.concatenate(c)
                                                 for c in zip(*parts, strict=True))
    # one key ordering by latent, kind, bin (highest first), rank: unique per window
    ranks = int(rank.max(initial=0)) + 1
    order = stable_argsort(((latent * len(KINDS) + kind) * n_bins + (n_bins - 1 - bins))
                           * ranks + rank)
    latent, kind, bins, seq, pos = (a[order].astype(np.int64)
                                    for a in (latent, kind, bins, seq, pos))
    lo, hi = shape.span(pos)
    return Windows(latent, kind, bins, seq, pos, value[order].astype(np.float32), lo, hi - lo)


# ---------------------------------------------------------------------------- 3. codes


def window_codes(codes: CodesFile, win: Windows, n_latents: int, size: int, say: Progress
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero and the not-counted codes of every window (its own latent's), as
    ``(window, offset in the window, code)`` sorted by window then offset; code NaN marks a
    token that was not encoded (a special token such as BOS, or a row the source left out).

    One sequential read of the saved codes. Per chunk of rows: the rows inside each window give
    the window's bitmask of encoded tokens (one bit per token, OR-ed over chunks, so a context
    split between chunks is handled), and the window latent's codes are found as one range of
    the chunk's entries sorted by (context, latent, position) — only codes that are nonzero
    are touched, not every token of every window.
    """
    by_seq = stable_argsort(win.seq)
    seq, lat = win.seq[by_seq], win.latent[by_seq]
    lo, length = win.start[by_seq], win.length[by_seq]
    n_words = max(1, -(-int(length.max(initial=1)) // 64))
    encoded = np.zeros((len(by_seq), n_words), dtype=np.uint64)
    full = _full_masks(length, n_words)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_rows, start = codes.n_rows(), time.perf_counter()
    for row0, offsets, latents, values, seqpos in codes.chunks(CHUNK_ROWS):
        say.progress("windows", row0 + len(seqpos), n_rows, start)
        if len(by_seq) == 0 or len(seqpos) == 0:
            continue
        a, b = np.searchsorted(seq, [seqpos[:, 0].min(), seqpos[:, 0].max() + 1])
        if a == b:
            continue
        w_seq, w_lat, w_lo, w_len = seq[a:b], lat[a:b], lo[a:b], length[a:b]
        # encoded tokens: a window whose rows are all in this chunk is complete; the others
        # (at a context's special tokens, or split between chunks) get their bits from the
        # chunk's (context × position) presence matrix
        order, keys = _sorted_rows(seqpos, size)
        first = np.searchsorted(keys, w_seq * size + w_lo)
        stop = np.searchsorted(keys, w_seq * size + w_lo + w_len)
        complete = stop - first == w_len
        encoded[a:b][complete] = full[a:b][complete]
        partial = np.nonzero(~complete & (stop > first))[0]
        if len(partial):
            encoded[a + partial] |= _presence_bits(keys, w_seq[partial], w_lo[partial],
                                                   full[a + partial], size)
        # the window latent's codes: one range of the entries sorted by (seq, latent, pos)
        row = np.repeat(np.arange(len(seqpos)), np.diff(offsets))
        entry_keys = (seqpos[row, 0] * n_latents + latents) * size + seqpos[row, 1]
        entry_order = stable_argsort(entry_keys)
        entry_keys = entry_keys[entry_order]
        base = (w_seq * n_latents + w_lat) * size
        hits, which = expand_ranges(np.searchsorted(entry_keys, base + w_lo),
                                    np.searchsorted(entry_keys, base + w_lo + w_len))
        entry = entry_order[hits]
        found.append((by_seq[a:b][which], seqpos[row[entry], 1] - w_lo[which], values[entry]))
    say.progress("windows", n_rows, n_rows, start, force=True)
    missing_w, missing_off = _missing_tokens(encoded, full)
    window = np.concatenate([*(f[0] for f in found), by_seq[missing_w]])
    offset = np.concatenate([*(f[1] for f in found), missing_off])
    code = np.concatenate([*(f[2] for f in found),
                           np.full(len(missing_w), np.nan, dtype=np.float32)])
    order = stable_argsort(window * (64 * n_words) + offset)
    return window[order], offset[order].astype(np.int64), code[order].astype(np.float32)


def _presence_bits(keys: np.ndarray, seq: np.ndarray, start: np.ndarray, full: np.ndarray,
                   size: int) -> np.ndarray:
    """(n, n_words) uint64 bitmasks: bit j of window i is set where the chunk has a row at
    (seq[i], start[i] + j), within the window's ``full`` mask; ``keys`` are the chunk's sorted
    token keys ``sequence·size + position``.

    Each context of the chunk gets one bitmask of its rows (a few words), and a window's mask
    is its context's mask shifted down by the window's start: a handful of word operations per
    window, whatever its length or how many of its tokens are there."""
    n_words = full.shape[1]
    ctx_words = -(-size // 64) + n_words + 1  # zero words past the end: shifts read them
    seqs = keys // size
    new_context = np.ones(len(keys), dtype=bool)
    new_context[1:] = seqs[1:] != seqs[:-1]
    contexts, local = seqs[new_context], np.cumsum(new_context) - 1
    pos = keys - seqs * size
    word = local * ctx_words + pos // 64  # non-decreasing: keys are sorted
    starts = np.concatenate([[0], np.flatnonzero(np.diff(word)) + 1])
    masks = np.zeros(len(contexts) * ctx_words, dtype=np.uint64)
    masks[word[starts]] = np.bitwise_or.reduceat(
        np.left_shift(np.uint64(1), (pos % 64).astype(np.uint64)), starts)
    at = np.minimum(np.searchsorted(contexts, seq), len(contexts) - 1)
    base = np.where(contexts[at] == seq, at * ctx_words, len(masks))
    masks = np.concatenate([masks, np.zeros(ctx_words, dtype=np.uint64)])  # unknown: empty
    shift = (start % 64).astype(np.uint64)
    up = np.where(shift > 0, np.uint64(64) - shift, np.uint64(0))
    out = np.empty_like(full)
    for w in range(n_words):
        low = masks[base + start // 64 + w] >> shift
        high = np.where(shift > 0, masks[base + start // 64 + w + 1] << up, np.uint64(0))
        out[:, w] = (low | high) & full[:, w]
    return out


def _full_masks(length: np.ndarray, n_words: int) -> np.ndarray:
    """(n, n_words) uint64 bitmasks with the low ``length`` bits set."""
    bits = np.clip(length[:, None] - 64 * np.arange(n_words)[None, :], 0, 64).astype(np.uint64)
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    shifted = np.left_shift(np.uint64(1), np.minimum(bits, np.uint64(63))) - np.uint64(1)
    return np.where(bits == 64, ones, shifted)


def _missing_tokens(encoded: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, bit) of every bit set in ``full`` but not in ``encoded``, lowest bit first: a
    window misses few tokens, so the lowest missing bit is taken off each word in turn."""
    missing = (full & ~encoded).reshape(-1)
    at = np.flatnonzero(missing)
    words, bits = [], []
    while len(at):
        word = missing[at]
        lowest = word & (~word + np.uint64(1))  # the lowest set bit
        words.append(at)
        bits.append(np.log2(lowest.astype(np.float64)).astype(np.int64))  # exact: a power of 2
        missing[at] = word ^ lowest
        at = at[missing[at] != 0]
    if not words:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    word_at, bit = np.concatenate(words), np.concatenate(bits)
    n_words = full.shape[1]
    return word_at // n_words, (word_at % n_words) * 64 + bit


# ---------------------------------------------------------------------------- 4. write


def write_examples(conn: sqlite3.Connection, win: Windows,
                   nonzero: tuple[np.ndarray, np.ndarray, np.ndarray],
                   tokens: Callable[[], np.ndarray], say: Progress) -> np.ndarray:
    """One ``examples`` row per latent and one ``contexts`` row per context a window comes
    from (docs/features.md lists the columns); returns the token ids that appear."""
    window, offset, code = nonzero
    start = time.perf_counter()
    cuts = np.concatenate([[0], np.nonzero(np.diff(win.latent))[0] + 1, [len(win.latent)]])
    # a token's index in its latent's windows laid end to end
    length = win.length
    window_start = np.cumsum(length) - length
    row_first = np.repeat(cuts[:-1], np.diff(cuts))
    flat = (window_start - window_start[row_first])[window] + offset
    columns = [(np.ascontiguousarray(a, dtype=t).tobytes(), np.dtype(t).itemsize) for a, t in (
        (win.kind, "u1"), (win.seq, "<i8"), (win.pos, "<i4"), (win.start, "<i4"),
        (length, "<i4"), (win.bin, "<i4"), (win.value, "<f4"))]
    flat_bytes = np.ascontiguousarray(flat, dtype="<i4").tobytes()
    code_bytes = np.ascontiguousarray(code, dtype="<f4").tobytes()
    code_cuts = np.searchsorted(window, cuts).tolist()
    rows = []
    for (i, j), (ci, cj) in zip(itertools.pairwise(cuts.tolist()),
                                itertools.pairwise(code_cuts), strict=True):
        rows.append((int(win.latent[i]), j - i,
                     *[col[i * size:j * size] for col, size in columns],
                     flat_bytes[4 * ci:4 * cj], code_bytes[4 * ci:4 * cj]))
        if len(rows) == 4096:
            conn.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            rows = []
            say.progress("write examples", int(win.latent[i]) + 1, None, start,
                         unit="latents")
    conn.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    return _write_contexts(conn, np.unique(win.seq), tokens)


def _write_contexts(conn: sqlite3.Connection, seqs: np.ndarray,
                    tokens: Callable[[], np.ndarray]) -> np.ndarray:
    used = np.zeros(0, dtype=bool)
    for lo in range(0, len(seqs), 4096):
        part = seqs[lo:lo + 4096]
        context_tokens = tokens()  # mapped afresh per block: its pages go with the map
        block = np.ascontiguousarray(context_tokens[part], dtype="<i4")
        del context_tokens
        if block.size and int(block.max()) >= len(used):
            used = np.concatenate([used, np.zeros(int(block.max()) + 1 - len(used), bool)])
        used[block.reshape(-1)] = True
        conn.executemany("INSERT INTO contexts VALUES (?, ?)",
                         zip(part.tolist(), (r.tobytes() for r in block), strict=True))
    return np.nonzero(used)[0]
