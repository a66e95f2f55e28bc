"""Build a feature store: stream rows through the SAE, keep statistics and examples, write SQLite.

Stages (each prints progress):

1. **encode** (the only pass over the model or the cache): every batch of rows is encoded by
   the SAE into sparse codes; per-latent counts, sums, maxima and a fine log-histogram, and the
   exact top-N contexts per latent, are updated; the codes go to a CSR file in ``_work/``. The
   state is saved every ``checkpoint_every_s`` seconds, so a killed build resumes from there.
2. **sample** (over the saved codes): a uniform sample of a few codes from each of the
   equal-count activation bins of every latent, and random windows where it never fires.
3. **windows**: every selected example becomes a window of tokens around its centre, with the
   latent's code at every token (looked up in the saved codes).
4. **extras**: decoder-cosine neighbours, logit effects (causal LMs), board-game labels.
5. **write**: a fresh SQLite file moved into place in one rename; explanations, scores,
   transcripts and user labels of the store it replaces are copied into it first.

Memory is bounded by the number of latents and the batch size, not by the number of tokens.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.features.collect import CodesFile, LatentStats, TopPerGroup
from saelab.features.examples import (
    WindowShape,
    random_picks,
    sample_pass,
    select,
    window_codes,
    write_examples,
)
from saelab.features.schema import (
    SCHEMA_VERSION,
    STORE_NAME,
    USER_TABLES,
    create_schema,
    fingerprint,
)
from saelab.features.sources import LoadedSpec, ModelSpec, RowStream
from saelab.io import atomic_write_bytes
from saelab.ops.kernels import release_freed_heap, tune_cpu_allocator
from saelab.training.logging import _fmt

WORK_DIR = "_work"
#: while the build's own arrays are made, buffers at least this large are mapped for
#: themselves and handed back when freed (see _own_buffers: without it RSS grew with the
#: number of batches)
MMAP_THRESHOLD = 1 << 20
#: while the model and the SAE run: glibc's largest dynamic threshold (64-bit), where its
#: default settles once batch-sized buffers have been freed, so their same-sized buffers are
#: reused from the heap every batch instead of being mapped and faulted in afresh
HEAP_THRESHOLD = 32 << 20

class StoreError(ValueError):
    """A feature store is missing, unfinished, corrupt or built for other weights."""


@dataclass
class FeatureBuildConfig:
    """Options of ``saelab features build``."""

    top_n: int = option(20, "top-activating contexts kept per latent")
    quantile_bins: int = option(10, "equal-count activation bins sampled per latent")
    per_bin: int = option(4, "examples sampled from each activation bin")
    n_random: int = option(10, "random windows where the latent never fires, per latent")
    window_before: int = option(24, "tokens shown before an example's centre token")
    window_after: int = option(8, "tokens shown after an example's centre token")
    n_logits: int = option(10, "most promoted and suppressed tokens per latent (causal LMs)")
    n_neighbours: int = option(10, "nearest latents by decoder cosine")
    batch_rows: int = option(2048, "rows per SAE encode")
    seed: int = option(0, "seed of the quantile and random samples")
    checkpoint_every_s: float = option(30.0, "save resumable state at most this often (seconds)")
    board_games: int = option(300, "board-game SAEs: games in each split of the board-label "
                              "evaluation (0 = no board labels)")

    def validate(self) -> None:
        if min(self.top_n, self.quantile_bins, self.batch_rows) < 1:
            raise ConfigError("top_n, quantile_bins and batch_rows must be at least 1")
        if min(self.per_bin, self.n_random, self.window_before, self.window_after,
               self.n_logits, self.n_neighbours, self.board_games) < 0:
            raise ConfigError("per_bin, n_random, window sizes, n_logits, n_neighbours and "
                              "board_games must be >= 0")


@dataclass
class BuildResult:
    path: Path
    n_rows: int
    n_latents: int
    seconds: float
    stage_seconds: dict[str, float]
    resumed_at_batch: int = 0
    skipped: bool = False


class _Say:
    """Progress lines on stderr: what, how far, rate and ETA, at most every ``interval`` s."""

    def __init__(self, enabled: bool, interval: float = 2.0) -> None:
        self.enabled, self.interval, self.last = enabled, interval, 0.0

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"features: {msg}", file=sys.stderr, flush=True)

    def progress(self, stage: str, done: int, total: int | None, start: float,
                 unit: str = "rows", force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        rate = done / max(now - start, 1e-9)
        if total:
            eta = _fmt((total - done) / max(rate, 1e-9))
            msg = f"{stage}: {done:,}/{total:,} {unit} ({100 * done / total:.1f}%) | " \
                  f"{rate:,.0f} {unit}/s | ETA {eta}"
        else:
            msg = f"{stage}: {done:,} {unit} | {rate:,.0f} {unit}/s"
        self(msg)


def store_path(out: str | Path) -> Path:
    return Path(out) / STORE_NAME


def sparse_entries(sae: SAE, acts_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, latent, value) of the positive codes of one batch, sorted by row then latent
    (``SAE.encode_entries``: a TopK SAE skips the dense rows × latents code matrix)."""
    with torch.no_grad():
        rows, latents, values = sae.encode_entries(
            torch.from_numpy(np.ascontiguousarray(acts_ND)))
    return rows.numpy(), latents.numpy(), values.float().numpy()


# ---------------------------------------------------------------------------- resumable state


class _State:
    """Pass-1 state in ``_work/``: arrays in ``state.npz``, counters in ``state.json``."""

    def __init__(self, work: Path, key: dict[str, Any]) -> None:
        self.work, self.key = work, key
        self.json_path, self.npz_path = work / "state.json", work / "state.npz"

    def load(self) -> dict[str, Any] | None:
        if not self.json_path.exists():
            return None
        info: dict[str, Any] = json.loads(self.json_path.read_text())
        if info.get("key") != self.key:
            raise StoreError(f"{self.work} holds an unfinished build with other settings or "
                             f"another SAE; rerun with the same settings to resume, or delete "
                             f"{self.work} to start over")
        return info

    def save(self, info: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        tmp = self.work / "state.tmp.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, self.npz_path)
        atomic_write_bytes(self.json_path, json.dumps({"key": self.key, **info}).encode())

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.npz_path) as data:
            return {k: data[k] for k in data.files}


# ---------------------------------------------------------------------------- the build


def build_store(sae: SAE, stream: RowStream, out: str | Path, cfg: FeatureBuildConfig, *,
                spec: ModelSpec | None = None, tokens: Callable[[], np.ndarray] | None = None,
                loaded: LoadedSpec | None = None, sae_path: str = "", source: str = "",
                rebuild: bool = False, progress: bool = True) -> BuildResult:
    """Build (or resume, or skip when finished) the feature store of ``sae`` in ``out``.

    ``tokens`` returns the contexts' token ids (n_contexts × context_size) for streams that do
    not hand them out per batch (a cache); ``loaded`` is the model used for logit effects and
    board labels and token strings (None: the store has ids only where no codec exists).
    """
    cfg.validate()
    start = time.perf_counter()
    out = Path(out)
    say = _Say(progress)
    spec = spec or ModelSpec("none")
    sae.eval()
    fp = fingerprint(sae)
    final = store_path(out)
    if final.exists():
        meta = read_meta(final)
        if meta.get("fingerprint") != fp:
            raise StoreError(f"{final} was built for other SAE weights ({meta.get('sae_path')}); "
                             "pass another --out for this SAE")
        if not rebuild and meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{final} was written in store schema version "
                             f"{meta.get('schema_version')}; this saelab writes version "
                             f"{SCHEMA_VERSION}: rebuild it with --rebuild (labels, "
                             "explanations, scores and transcripts are kept)")
        if not rebuild:
            say(f"{final} is already built for this SAE (use --rebuild to build it again)")
            return BuildResult(final, int(meta.get("n_rows", 0)), sae.cfg.d_sae, 0.0, {},
                               skipped=True)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    key = {"fingerprint": fp, "config": to_dict(cfg), "source": source,
           "width": stream.width, "schema_version": SCHEMA_VERSION}
    if sae.cfg.d_in != stream.width:
        raise ConfigError(f"the SAE expects d_in={sae.cfg.d_in} but the activations have width "
                          f"{stream.width}; build the store from the SAE's own model and hook")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    state = _State(work, key)
    stats, top, codes, resumed = _encode_pass(sae, stream, cfg, state, work, say)
    tune_cpu_allocator(MMAP_THRESHOLD)  # the rest of the build makes only its own arrays
    times["encode"] = time.perf_counter() - t0
    if stats.n_rows == 0:
        raise StoreError("the source yielded no rows to encode")
    open_tokens: Callable[[], np.ndarray] = tokens if tokens is not None else \
        functools.partial(_work_tokens, work, stream.context_size)
    n_contexts, context_size = (int(s) for s in open_tokens().shape)

    t0 = time.perf_counter()
    # float32 like the codes, so a code's bin is the same in the build and against the stored
    # edges
    edges = stats.quantile_edges(cfg.quantile_bins).astype(np.float32)
    window = WindowShape(cfg.window_before, cfg.window_after, context_size)
    quant, pool, fired = sample_pass(codes, edges, n_contexts, window, per_bin=cfg.per_bin,
                                     n_random=cfg.n_random, seed=cfg.seed, say=say)
    windows = select(top, quant if cfg.per_bin else None,
                     random_picks(fired, stats.n_latents, cfg.n_random), pool,
                     cfg.quantile_bins, window)
    del quant, pool, fired
    times["sample"] = time.perf_counter() - t0

    tmp = work / f"{STORE_NAME}.partial"
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        # a private file, moved into place only when complete: no journal needed while writing
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        create_schema(conn)
        t0 = time.perf_counter()
        codes_of_windows = window_codes(codes, windows, stats.n_latents, context_size, say)
        used_ids = set(write_examples(conn, windows, codes_of_windows, open_tokens,
                                      say).tolist())
        del windows, codes_of_windows
        times["windows"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _write_latents(conn, stats, edges)
        _write_neighbours(conn, sae, cfg.n_neighbours)
        notes: dict[str, Any] = {}
        if loaded is not None and loaded.is_causal_lm and cfg.n_logits:
            notes["logit_effects"] = _write_logit_effects(conn, sae, loaded, cfg.n_logits,
                                                          used_ids)
        if loaded is not None and spec.kind == "game" and cfg.board_games:
            notes["board_labels"] = _write_board_labels(conn, sae, loaded, spec, cfg, say)
        _write_token_strings(conn, used_ids, loaded)
        times["extras"] = time.perf_counter() - t0
        meta = {"schema_version": SCHEMA_VERSION, "fingerprint": fp, "sae_path": sae_path,
                "sae": {"architecture": sae.name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae},
                "model": spec.to_dict(), "source": source, "n_rows": stats.n_rows,
                "n_contexts": n_contexts, "context_size": context_size,
                "config": to_dict(cfg), "notes": notes, "built": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stage_seconds": times}
        conn.executemany("INSERT INTO meta VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in meta.items()])
        if final.exists():
            _copy_user_rows(conn, final)
        conn.commit()
        conn.execute("PRAGMA journal_mode = DELETE")  # readers and label writers journal again
    finally:
        conn.close()
    os.replace(tmp, final)
    tune_cpu_allocator(HEAP_THRESHOLD)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    say(f"wrote {final}: {stats.n_latents:,} latents over {stats.n_rows:,} tokens in "
        f"{seconds:.0f} s")
    return BuildResult(final, stats.n_rows, stats.n_latents, seconds, times, resumed)


def _encode_pass(sae: SAE, stream: RowStream, cfg: FeatureBuildConfig, state: _State,
                 work: Path, say: _Say) -> tuple[LatentStats, TopPerGroup, CodesFile, int]:
    M = sae.cfg.d_sae
    stats, top, codes = LatentStats(M), TopPerGroup(M, cfg.top_n), CodesFile(work / "codes")
    tokens_path = work / "tokens.i32"
    info = state.load()
    batches_done, nnz = 0, 0
    if info is not None:
        arrays = state.arrays()
        stats.load(arrays)
        top.load(arrays, "top")
        batches_done, nnz = int(info["batches_done"]), int(info["nnz"])
        codes.truncate(info["code_sizes"])
        with open(tokens_path, "ab") as fh:
            fh.truncate(int(info["tokens_size"]))
        if info.get("finished"):
            return stats, top, codes, batches_done
        say(f"resuming at batch {batches_done} ({stats.n_rows:,} rows already encoded)")
    else:
        codes.truncate([0, 0, 0, 0])
        tokens_path.write_bytes(b"")
    resumed = batches_done
    total = stream.total_rows()
    start, rows_at_start, last_save = time.perf_counter(), stats.n_rows, time.perf_counter()

    def save(finished: bool) -> None:
        state.save({"batches_done": batches_done, "nnz": nnz, "code_sizes": codes.sizes(),
                    "tokens_size": tokens_path.stat().st_size, "finished": finished},
                   {**stats.state(), **top.state("top")})

    tune_cpu_allocator(HEAP_THRESHOLD)
    for batch in stream.batches(batches_done):
        for lo in range(0, len(batch.acts_ND), cfg.batch_rows):
            acts = batch.acts_ND[lo:lo + cfg.batch_rows]
            seqpos = batch.seqpos_N2[lo:lo + cfg.batch_rows]
            rows, latents, values = sparse_entries(sae, acts)
            with _own_buffers():
                stats.update(len(acts), latents, values)
                top.offer(latents, values, seqpos[rows, 0], seqpos[rows, 1], values)
                codes.append(rows, latents, values, len(acts), seqpos, nnz)
            nnz += len(values)
        if batch.tokens_BS is not None:
            with open(tokens_path, "ab") as fh:
                fh.write(np.ascontiguousarray(batch.tokens_BS, dtype=np.int32).tobytes())
        batches_done = batch.number + 1
        say.progress("encode", stats.n_rows - rows_at_start, total and total - rows_at_start,
                     start)
        if time.perf_counter() - last_save > cfg.checkpoint_every_s:
            with _own_buffers():
                save(False)
            last_save = time.perf_counter()
    with _own_buffers():
        save(True)
    release_freed_heap()
    say.progress("encode", stats.n_rows - rows_at_start, None, start, force=True)
    return stats, top, codes, resumed


@contextmanager
def _own_buffers() -> Iterator[None]:
    """The build's own arrays (variable-sized, some kept across batches) are mapped from
    ``MMAP_THRESHOLD`` up and handed back when freed, so they leave no holes in the heap that
    RSS would grow by; the model's and the SAE's buffers come from the heap as glibc's default
    would serve them (mapping those too cost ~30% more CPU in page faults)."""
    tune_cpu_allocator(MMAP_THRESHOLD)
    try:
        yield
    finally:
        tune_cpu_allocator(HEAP_THRESHOLD)


def _work_tokens(work: Path, context_size: int) -> np.ndarray:
    return np.memmap(work / "tokens.i32", dtype=np.int32, mode="r").reshape(-1, context_size)


def _write_latents(conn: sqlite3.Connection, stats: LatentStats, edges: np.ndarray) -> None:
    """One row per latent; the histogram from its first to its last populated fine bin."""
    fired = stats.hist > 0
    any_fired = fired.any(axis=1)
    first = np.where(any_fired, fired.argmax(axis=1), 0)
    stop = np.where(any_fired, fired.shape[1] - fired[:, ::-1].argmax(axis=1), 0)
    count = stats.count
    mean = np.where(count > 0, stats.total / np.maximum(count, 1), 0.0)
    density = count / max(1, stats.n_rows)
    hist = np.ascontiguousarray(stats.hist, dtype="<i8")
    edge_bytes = np.ascontiguousarray(edges, dtype="<f8")
    conn.executemany("INSERT INTO latents VALUES (?,?,?,?,?,?,?,?)", (
        (m, c, d, a, mx, lo, hist[m, lo:hi].tobytes(), edge_bytes[m].tobytes() if c else b"")
        for m, c, d, a, mx, lo, hi in zip(
            range(stats.n_latents), count.tolist(), density.tolist(), mean.tolist(),
            stats.max.astype(np.float64).tolist(), first.tolist(), stop.tolist(),
            strict=True)))


@torch.no_grad()
def _write_neighbours(conn: sqlite3.Connection, sae: SAE, n: int) -> None:
    if n == 0 or sae.cfg.d_sae < 2:
        return
    W = sae.W_dec.detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = min(n, sae.cfg.d_sae - 1)
    for lo in range(0, W.shape[0], 1024):
        sims = W[lo:lo + 1024] @ W.T
        sims[torch.arange(sims.shape[0]), torch.arange(lo, lo + sims.shape[0])] = -2.0
        vals, idx = sims.topk(n, dim=1)
        others = idx.numpy().astype("<i4")
        cosines = vals.numpy().astype("<f4")
        conn.executemany("INSERT INTO neighbours VALUES (?,?,?)", (
            (lo + i, others[i].tobytes(), cosines[i].tobytes()) for i in range(len(others))))


def final_norm_gain(model: torch.nn.Module, width: int) -> tuple[Tensor | None, bool, str]:
    """The gain of the model's final norm and whether it centres (LayerNorm): the last
    module named like a final norm (``ln_f``, ``norm``, ``final_layer_norm``) of this width."""
    found: tuple[Tensor | None, bool, str] = (None, False, "")
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        weight = getattr(module, "weight", None)
        if leaf in ("ln_f", "norm", "final_layer_norm", "final_layernorm") and \
                isinstance(weight, Tensor) and weight.shape == (width,):
            found = (weight.detach().float(), isinstance(module, torch.nn.LayerNorm), name)
    return found


@torch.no_grad()
def _write_logit_effects(conn: sqlite3.Connection, sae: SAE, loaded: LoadedSpec, n: int,
                         used: set[int]) -> dict[str, Any]:
    """Logit change per unit code: W_U · (γ ⊙ centre(d)) for decoder direction d (see
    docs/features.md: the final norm's gain and centring are kept, its 1/σ scale dropped)."""
    get = getattr(loaded.model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or getattr(head, "weight", None) is None:
        return {"skipped": "the model has no output embedding (get_output_embeddings)"}
    W_U = head.weight.detach().float()  # V × D
    if W_U.shape[1] != sae.cfg.d_in:
        return {"skipped": f"unembedding width {W_U.shape[1]} != SAE width {sae.cfg.d_in}"}
    gain, centre, norm_name = final_norm_gain(loaded.model, sae.cfg.d_in)
    W_dec = sae.W_dec.detach().float()
    for lo in range(0, W_dec.shape[0], 512):
        d = W_dec[lo:lo + 512]
        if centre:
            d = d - d.mean(1, keepdim=True)
        if gain is not None:
            d = d * gain
        effect = d @ W_U.T
        k = min(n, effect.shape[1])
        for direction, (vals, idx) in (("promoted", effect.topk(k, dim=1)),
                                       ("suppressed", (-effect).topk(k, dim=1))):
            sign = 1.0 if direction == "promoted" else -1.0
            ids = idx.numpy().astype("<i4")
            values = (sign * vals).numpy().astype("<f4")
            used.update(np.unique(ids).tolist())
            conn.executemany("INSERT INTO logit_effects VALUES (?,?,?,?)", (
                (lo + i, direction, ids[i].tobytes(), values[i].tobytes())
                for i in range(len(ids))))
    return {"final_norm": norm_name or "none found", "centred": centre,
            "approximation": "W_U (gain * centre(d)); the norm's 1/sigma scale is dropped"}


def _write_board_labels(conn: sqlite3.Connection, sae: SAE, loaded: LoadedSpec,
                        spec: ModelSpec, cfg: FeatureBuildConfig, say: _Say) -> dict[str, Any]:
    from saelab.evals import boardgame as board_eval

    layer = int(spec.hook.rsplit(".", 1)[-1]) if spec.hook.startswith("transformer.h.") else -1
    if layer < 0:
        return {"skipped": f"hook {spec.hook} is not a residual-stream block"}
    eval_cfg = board_eval.BoardEvalConfig(game=spec.game, model=spec.name, layer=layer,
                                          train_games=cfg.board_games,
                                          test_games=cfg.board_games, seed=cfg.seed,
                                          probe=False)
    say(f"board labels: {cfg.board_games} + {cfg.board_games} games")
    data = board_eval.collect_board_data(eval_cfg)
    labels = board_eval.latent_board_labels(sae, data, eval_cfg)
    details = {"train_games": cfg.board_games, "test_games": cfg.board_games,
               "layer": layer, "method": "best (threshold, property, cell) by F1 on training "
               "games; F1 reported on held-out games"}
    conn.executemany(
        "INSERT INTO labels (latent, source, text, score, score_name, details) VALUES "
        "(?, 'boardgame', ?, ?, 'f1_test', ?)",
        [(lab.latent, f"{lab.property}: {lab.cell}", lab.f1_test,
          json.dumps({**details, "property": lab.property, "cell": lab.cell,
                      "threshold": lab.threshold, "f1_train": lab.f1_train,
                      "precision_test": lab.precision_test, "recall_test": lab.recall_test}))
         for lab in labels])
    return {"n_labels": len(labels), **details}


def _write_token_strings(conn: sqlite3.Connection, ids: set[int],
                         loaded: LoadedSpec | None) -> None:
    ordered = sorted(ids)
    texts = loaded.codec.token_text(ordered) if loaded is not None else [
        f"<{i}>" for i in ordered]
    conn.executemany("INSERT INTO tokens VALUES (?, ?)", list(zip(ordered, texts, strict=True)))


def _copy_user_rows(conn: sqlite3.Connection, old: Path) -> None:
    """Keep what users and later stages wrote into the store this build replaces."""
    conn.execute("ATTACH DATABASE ? AS old", (str(old),))
    for table in USER_TABLES:
        conn.execute(f"INSERT INTO main.{table} SELECT * FROM old.{table}")
    conn.execute("INSERT INTO main.labels (latent, source, text, score, score_name, details, "
                 "created) SELECT latent, source, text, score, score_name, details, created "
                 "FROM old.labels WHERE source != 'boardgame'")
    conn.commit()
    conn.execute("DETACH DATABASE old")


def read_meta(path: Path) -> dict[str, Any]:
    """The meta table of a finished store (StoreError if it is not one)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT key, value FROM meta").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path} is not a readable feature store ({err}); rebuild it with "
                         "saelab features build") from err
    return {k: json.loads(v) for k, v in rows}
