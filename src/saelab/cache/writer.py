"""Write an activation cache, uniformly shuffled, with bounded memory and exact resume.

Two streaming passes (a scatter shuffle):

1. **Scatter.** Every incoming row gets an independent, uniformly random bucket id in
   ``[0, n_buckets)`` and is appended to that bucket's file. Bucket count is chosen so one
   bucket fits in half of ``memory_limit_mb``. Every ``commit_every_s`` seconds (and at the
   end), after a complete context batch, all files are flushed and fsynced and
   ``progress.json`` is replaced atomically with the batch count and every file's length.
2. **Permute.** Each bucket is loaded, permuted uniformly, and written as one final shard
   (``acts_NNNNN.npy`` + ``index_NNNNN.npy``); then the bucket is deleted.

Why the result is a uniform shuffle of all N rows: for bucket sizes (n_1 … n_k), every
assignment of rows to buckets with those sizes is equally likely (the ids are i.i.d. uniform),
with probability 1 / (N! / Π n_b!); each bucket is then ordered by a uniform permutation,
probability 1 / n_b!. So every ordering of the concatenated shards has probability
(Π n_b! / N!) · Π (1 / n_b!) = 1 / N!, whatever the bucket sizes came out as.

Resume: rows are committed in whole context batches. On restart every file is truncated back
to the length recorded in ``progress.json`` (dropping batches written after the last commit,
and any half-written one) and the caller continues from ``batches_done``. Bucket ids come from a generator keyed by (seed, batch number), so a
resumed cache is byte-identical to an uninterrupted one. Pass 2 records each finished shard;
redoing a bucket rewrites an identical shard, so pass 2 is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import Tensor

from saelab.cache.format import (
    DTYPES,
    MANIFEST,
    PROGRESS,
    TOKENS,
    WORK_DIR,
    CacheError,
    CacheManifest,
    ShardInfo,
    read_manifest,
    sha256_file,
)
from saelab.io import atomic_write_json
from saelab.lock import LOCK_NAME

BUCKET_SHARE_OF_LIMIT = 0.5  # one bucket (loaded whole in pass 2) may use half the budget
MAX_BUCKETS = 480  # two open files per bucket in pass 1; stay under the usual 1024-file limit
_WRITE_CHUNK_BYTES = 32 << 20


@dataclass
class WriterSettings:
    """What fixes the cache's content; a resume must use the same settings."""

    width: int
    max_rows: int
    context_size: int
    dtype: str = "float32"
    memory_limit_mb: int = 2048
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # model, hook, tokenizer, text settings

    @property
    def row_bytes(self) -> int:
        return self.width * np.dtype(self.dtype).itemsize

    def n_buckets(self) -> int:
        budget = self.memory_limit_mb * (1 << 20) * BUCKET_SHARE_OF_LIMIT
        return max(1, math.ceil(self.max_rows * self.row_bytes / budget))


@dataclass
class _Progress:
    settings: dict[str, Any]
    n_buckets: int
    phase: str = "scatter"  # then "permute"
    batches_done: int = 0
    contexts_done: int = 0
    rows_done: int = 0
    bucket_rows: list[int] = field(default_factory=list)
    shards_done: dict[str, dict[str, Any]] = field(default_factory=dict)  # bucket -> ShardInfo
    scatter_seconds: float = 0.0
    permute_seconds: float = 0.0


class CacheWriter:
    """Append context batches of activations, then :meth:`finish` to shuffle and seal.

    Creating a writer on a folder with an unfinished cache of the same settings resumes it;
    on a finished cache, :attr:`complete` is True and nothing needs doing.
    """

    def __init__(self, folder: str | Path, settings: WriterSettings,
                 commit_every_s: float = 2.0) -> None:
        if settings.dtype not in DTYPES:
            raise CacheError(f"cache dtype {settings.dtype!r} is not one of {list(DTYPES)}")
        if settings.memory_limit_mb < 16:
            raise CacheError(f"memory_limit_mb={settings.memory_limit_mb} is too small; use at "
                             "least 16")
        self.folder = Path(folder)
        self.settings = settings
        self.commit_every_s = commit_every_s  # 0 = commit after every batch
        self._last_commit = time.monotonic()
        self.work = self.folder / WORK_DIR
        self.complete = (self.folder / MANIFEST).exists()
        self._files: dict[int, tuple[BinaryIO, BinaryIO]] = {}
        self._tokens_file: BinaryIO | None = None
        if self.complete:
            self._check_finished_matches()
            self._cleanup()
            return
        self.progress = self._load_or_start()

    # ------------------------------------------------------------------ set-up and resume

    def _fingerprint(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.settings)))

    def _check_finished_matches(self) -> None:
        manifest = read_manifest(self.folder)
        saved = manifest.info.get("writer_settings")
        if saved is not None and saved != self._fingerprint():
            raise CacheError(f"{self.folder} already holds a finished cache made with other "
                             f"settings (differs in {_differing(saved, self._fingerprint())}); "
                             "use a new folder")

    def _load_or_start(self) -> _Progress:
        path = self.folder / PROGRESS
        if path.exists():
            try:
                progress = _Progress(**json.loads(path.read_text()))
            except (json.JSONDecodeError, TypeError) as err:
                raise CacheError(f"{path} is unreadable ({err}); the unfinished cache cannot be "
                                 "resumed — delete the folder and rerun") from err
            if progress.settings != self._fingerprint():
                raise CacheError(f"{self.folder} holds an unfinished cache made with other "
                                 f"settings (differs in {_differing(progress.settings, self._fingerprint())}); "
                                 "rerun with the original settings to resume, or use a new folder")
            self._truncate_to(progress)
            return progress
        if self.folder.exists() and any(p.name != LOCK_NAME for p in self.folder.iterdir()):
            raise CacheError(f"{self.folder} is not empty and holds no saelab cache; choose a new "
                             "or empty folder (nothing there was changed)")
        n_buckets = self.settings.n_buckets()
        if n_buckets > MAX_BUCKETS:
            raise CacheError(f"caching {self.settings.max_rows:,} rows within "
                             f"memory_limit_mb={self.settings.memory_limit_mb} needs {n_buckets} "
                             f"buckets (more than {MAX_BUCKETS}); raise memory_limit_mb")
        self.work.mkdir(parents=True, exist_ok=True)
        progress = _Progress(self._fingerprint(), n_buckets, bucket_rows=[0] * n_buckets)
        self._commit(progress)
        return progress

    def _truncate_to(self, progress: _Progress) -> None:
        """Cut every pass-1 file back to its committed length (drops a half-written batch)."""
        if progress.phase != "scatter":
            return
        expected = {self._tokens_path(): progress.contexts_done * self.settings.context_size * 4}
        for b, rows in enumerate(progress.bucket_rows):
            acts, index = self._bucket_paths(b)
            expected[acts] = rows * self.settings.row_bytes
            expected[index] = rows * 16
        for path, size in expected.items():
            have = path.stat().st_size if path.exists() else 0
            if have < size:
                raise CacheError(f"{path} holds {have} bytes but {size} were committed; the "
                                 "unfinished cache is damaged — delete the folder and rerun")
            if path.exists():
                os.truncate(path, size)

    # ------------------------------------------------------------------ pass 1: scatter

    @property
    def batches_done(self) -> int:
        return self.progress.batches_done if not self.complete else -1

    @property
    def scattering(self) -> bool:
        return not self.complete and self.progress.phase == "scatter"

    def add_batch(self, batch_number: int, acts_ND: Tensor | np.ndarray, index_N2: Tensor | np.ndarray,
                  tokens_BS: Tensor | np.ndarray) -> None:
        """Append one context batch: its kept rows, their (row in batch, position), its tokens.

        ``batch_number`` must equal :attr:`batches_done`, which guards against gaps and repeats.
        """
        if not self.scattering:
            raise CacheError(f"{self.folder}: the cache is already being shuffled or finished; "
                             "no more rows can be added")
        if batch_number != self.progress.batches_done:
            raise CacheError(f"batch {batch_number} given but the cache expects batch "
                             f"{self.progress.batches_done} next")
        start = time.perf_counter()
        acts, index, tokens = _as_numpy(acts_ND), _as_numpy(index_N2), _as_numpy(tokens_BS)
        self._check_batch(batch_number, acts, index, tokens)
        rows = acts.astype(self.settings.dtype, copy=False)
        index = index.astype(np.int64) + np.array([self.progress.contexts_done, 0])
        bucket_N = bucket_rng(self.settings.seed, batch_number).integers(
            self.progress.n_buckets, size=rows.shape[0])
        order = np.argsort(bucket_N, kind="stable")
        rows, index = rows[order], index[order]  # one gather; each bucket is then a slice
        counts = np.bincount(bucket_N, minlength=self.progress.n_buckets)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for b in np.flatnonzero(counts):
            acts_fh, index_fh = self._bucket_files(int(b))
            acts_fh.write(rows[bounds[b]:bounds[b + 1]].data)
            index_fh.write(index[bounds[b]:bounds[b + 1]].data)
        self._tokens().write(np.ascontiguousarray(tokens, dtype=np.int32).data)
        p = self.progress
        p.batches_done += 1
        p.contexts_done += tokens.shape[0]
        p.rows_done += rows.shape[0]
        p.bucket_rows = [r + int(c) for r, c in zip(p.bucket_rows, counts, strict=True)]
        p.scatter_seconds += time.perf_counter() - start
        if time.monotonic() - self._last_commit >= self.commit_every_s:
            self.commit()

    def commit(self) -> None:
        """Make every batch added so far durable and record it in ``progress.json``."""
        if self.scattering:
            self._sync_files()
            self._commit(self.progress)
            self._last_commit = time.monotonic()

    def _check_batch(self, batch_number: int, acts: np.ndarray, index: np.ndarray,
                     tokens: np.ndarray) -> None:
        s = self.settings
        where = f"{self.folder}: batch {batch_number}"
        if acts.ndim != 2 or acts.shape[1] != s.width:
            raise CacheError(f"{where} has activations of shape {acts.shape}; the cache holds "
                             f"width {s.width}")
        if index.shape != (acts.shape[0], 2):
            raise CacheError(f"{where}: index has shape {index.shape}, expected ({acts.shape[0]}, 2)")
        if tokens.ndim != 2 or tokens.shape[1] != s.context_size:
            raise CacheError(f"{where}: tokens have shape {tokens.shape}, expected (contexts, "
                             f"{s.context_size})")
        if self.progress.rows_done + acts.shape[0] > s.max_rows:
            raise CacheError(f"{where} would take the cache past max_rows={s.max_rows:,}; raise "
                             "max_rows (it sizes the shuffle buckets)")
        if not np.isfinite(acts).all():
            raise CacheError(f"{where} has NaN/infinite activations; the model produced them — "
                             "check its dtype (float16 overflow?) and inputs")
        if s.dtype == "float16" and acts.dtype != np.float16 and acts.size and max(
                -float(acts.min()), float(acts.max())) > np.finfo(np.float16).max:
            raise CacheError(f"{where} has activations beyond float16 range; cache as float32")

    def _bucket_paths(self, b: int) -> tuple[Path, Path]:
        return self.work / f"bucket_{b:05d}.acts", self.work / f"bucket_{b:05d}.index"

    def _tokens_path(self) -> Path:
        return self.work / "tokens.bin"

    def _bucket_files(self, b: int) -> tuple[BinaryIO, BinaryIO]:
        if b not in self._files:
            acts, index = self._bucket_paths(b)
            self._files[b] = (open(acts, "ab"), open(index, "ab"))  # noqa: SIM115 - kept open
        return self._files[b]

    def _tokens(self) -> BinaryIO:
        if self._tokens_file is None:
            self._tokens_file = open(self._tokens_path(), "ab")  # noqa: SIM115 - kept open
        return self._tokens_file

    def _sync_files(self) -> None:
        # fsync before the progress commit: a committed batch is on disk even after a power cut.
        # (A SIGKILL alone would not need it: the kernel keeps written data.)
        handles = [fh for pair in self._files.values() for fh in pair]
        for fh in [*handles, self._tokens()]:
            fh.flush()
            os.fsync(fh.fileno())

    def _close_files(self) -> None:
        for pair in self._files.values():
            for fh in pair:
                fh.close()
        self._files.clear()
        if self._tokens_file is not None:
            self._tokens_file.close()
            self._tokens_file = None

    def _commit(self, progress: _Progress) -> None:
        atomic_write_json(self.folder / PROGRESS, asdict(progress))

    # ------------------------------------------------------------------ pass 2: permute

    def finish(self, info: dict[str, Any] | None = None) -> CacheManifest:
        """Shuffle every bucket into its final shard and write the manifest (idempotent)."""
        if self.complete:
            return read_manifest(self.folder)
        self.commit()
        self._close_files()
        p = self.progress
        if p.rows_done == 0:
            raise CacheError(f"{self.folder}: no rows were cached (all positions masked, or no "
                             "text?); nothing to finish")
        p.phase = "permute"
        self._commit(p)
        for b in range(p.n_buckets):
            if str(b) not in p.shards_done and p.bucket_rows[b] > 0:
                start = time.perf_counter()
                p.shards_done[str(b)] = asdict(self._write_shard(b, p.bucket_rows[b]))
                p.permute_seconds += time.perf_counter() - start
                self._commit(p)
            for path in self._bucket_paths(b):
                path.unlink(missing_ok=True)
        manifest = self._seal(info or {})
        self.complete = True
        return manifest

    def _write_shard(self, b: int, rows: int) -> ShardInfo:
        s = self.settings
        acts_path, index_path = self._bucket_paths(b)
        acts = np.fromfile(acts_path, dtype=s.dtype).reshape(-1, s.width)
        index = np.fromfile(index_path, dtype=np.int64).reshape(-1, 2)
        if acts.shape[0] != rows or index.shape[0] != rows:
            raise CacheError(f"{acts_path} holds {acts.shape[0]} rows, {rows} were committed; "
                             "delete the folder and rerun")
        perm = permutation_rng(s.seed, b).permutation(rows)
        name = f"{b:05d}"
        acts_sha = _write_npy_rows(self.folder / f"acts_{name}.npy", acts, perm)
        index_sha = _write_npy_rows(self.folder / f"index_{name}.npy", index, perm)
        return ShardInfo(f"acts_{name}.npy", f"index_{name}.npy", rows, acts_sha, index_sha)

    def _seal(self, info: dict[str, Any]) -> CacheManifest:
        p, s = self.progress, self.settings
        tokens_sha = _tokens_to_npy(self._tokens_path(), self.folder / TOKENS, s.context_size)
        shards = [ShardInfo(**p.shards_done[str(b)]) for b in range(p.n_buckets)
                  if str(b) in p.shards_done]
        meta = dict(s.meta)
        manifest = CacheManifest(
            model=str(meta.pop("model", "")), hook=str(meta.pop("hook", "")), dtype=s.dtype,
            width=s.width, n_rows=p.rows_done, n_contexts=p.contexts_done,
            context_size=s.context_size, tokenizer=str(meta.pop("tokenizer", "")), seed=s.seed,
            shards=shards, tokens_sha256=tokens_sha,
            info={**meta, **info, "writer_settings": self._fingerprint(),
                  "n_buckets": p.n_buckets, "scatter_seconds": round(p.scatter_seconds, 3),
                  "permute_seconds": round(p.permute_seconds, 3)},
        )
        atomic_write_json(self.folder / MANIFEST, manifest.to_dict())
        self._cleanup()
        return manifest

    def _cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        (self.folder / PROGRESS).unlink(missing_ok=True)


# Every random stream of the writer is its own child of SeedSequence(seed), keyed by
# (purpose, number): the streams are independent by construction, which the uniformity proof
# above assumes. (Plain entropy lists do not give this: [s, 1, 0] and [s, 1] seed the same
# stream, so bucket 0's permutation reused the numbers that placed batch 1's rows.)
_BUCKETS, _PERMUTATION = 0, 1


def bucket_rng(seed: int, batch_number: int) -> np.random.Generator:
    """The generator that assigns context batch ``batch_number``'s rows to buckets."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BUCKETS, batch_number)))


def permutation_rng(seed: int, bucket: int) -> np.random.Generator:
    """The generator of bucket ``bucket``'s final permutation."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PERMUTATION, bucket)))


def _as_numpy(value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().float().numpy() if value.is_floating_point() else \
            value.detach().cpu().numpy()
    return np.asarray(value)


class _HashingWriter:
    """A binary file that hashes everything written to it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        return self.fh.write(data)


def _write_npy_rows(path: Path, array: np.ndarray, order: np.ndarray) -> str:
    """Write ``array[order]`` as .npy in chunks (no full permuted copy), atomically; sha256."""
    tmp = path.with_name(f".{path.name}.tmp")
    chunk = max(1, _WRITE_CHUNK_BYTES // max(1, array.strides[0]))
    with open(tmp, "wb") as fh:
        out = _HashingWriter(fh)
        header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                  "shape": (len(order), *array.shape[1:])}
        np.lib.format.write_array_header_1_0(out, header)  # type: ignore[arg-type]
        for start in range(0, len(order), chunk):
            out.write(array[order[start:start + chunk]].data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return out.digest.hexdigest()


def _tokens_to_npy(raw: Path, path: Path, context_size: int) -> str:
    """Turn the raw int32 token stream into tokens.npy, streaming; returns its sha256."""
    if path.exists() and not raw.exists():  # sealed before, cleanup interrupted
        return sha256_file(path)
    n_contexts = raw.stat().st_size // (4 * context_size)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(raw, "rb") as src, open(tmp, "wb") as fh:
        out = _HashingWriter(fh)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
                  "fortran_order": False, "shape": (n_contexts, context_size)}
        np.lib.format.write_array_header_1_0(out, header)  # type: ignore[arg-type]
        while block := src.read(_WRITE_CHUNK_BYTES):
            out.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return out.digest.hexdigest()


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

