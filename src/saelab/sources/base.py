"""One model input batch and the activation cache built from a stream of them."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saelab.cache.build import CacheBuildResult, CacheConfig, cache_folders
from saelab.cache.format import CacheError
from saelab.cache.writer import CacheWriter, WriterSettings
from saelab.config import ConfigError
from saelab.models.hooks import HookPoint, capture


@dataclass
class InputBatch:
    """Keyword inputs of one forward pass plus, per position, an id and whether it counts.

    ``ids_BS`` is what the cache stores as its "tokens": amino-acid token ids for proteins, the
    image's number in the folder listing for images (so every cached row can be traced back to
    its image and patch). ``keep_BS`` marks the positions whose activations are cached.
    """

    inputs: dict[str, Tensor]
    ids_BS: Tensor
    keep_BS: Tensor


def input_forward(model: nn.Module) -> Callable[[InputBatch], Any]:
    """Call ``model(**batch.inputs)``."""
    return lambda batch: model(**batch.inputs)


def build_input_cache(model: nn.Module, batches: Callable[[], Iterable[InputBatch]],
                      hooks: Sequence[HookPoint | str], out: str | Path, cfg: CacheConfig, *,
                      max_rows: int, meta: dict[str, Any],
                      log: Callable[[str], None] | None = None) -> CacheBuildResult:
    """Run ``model`` over ``batches()`` and cache the kept positions at every hook.

    ``max_rows`` bounds the rows (it sizes the shuffle buckets); the positions per sequence
    come from the first batch's ``ids_BS``; ``meta`` (model, source
    files, settings) goes into each manifest. Resumable like the text cache: ``batches`` must
    yield the same sequence on every call, and a rerun skips the batches already committed.
    All hooks get the same rows in the same order of (sequence, position), so caches of several
    hooks from one run pair up row by row (transcoders, crosscoders).
    """
    cfg.validate()
    points = list(dict.fromkeys(HookPoint.parse(h) for h in hooks))
    if not points:
        raise ConfigError("no hooks given: name at least one module path to cache")
    say = log or (lambda msg: print(msg, file=sys.stderr))
    start = time.perf_counter()
    forward = input_forward(model)
    iterator = iter(batches())
    first = next(iterator, None)
    if first is None:
        raise CacheError("the input source yielded no batches")
    with torch.no_grad():
        acts = capture(model, points, lambda: forward(first))
    widths = {p: int(a.shape[-1]) for p, a in acts.items()}
    folders = cache_folders(out, points)
    context_size = int(first.ids_BS.shape[1])
    writers = {p: CacheWriter(folders[p], WriterSettings(
        width=widths[p], max_rows=max_rows, context_size=context_size, dtype=cfg.dtype,
        memory_limit_mb=cfg.memory_limit_mb, seed=cfg.seed,
        meta={**meta, "hook": p.name}), commit_every_s=cfg.commit_every_s) for p in points}
    pending = {p: w for p, w in writers.items() if w.scattering}
    resume_at = min((w.batches_done for w in pending.values()), default=0)
    if resume_at:
        say(f"resuming the cache at batch {resume_at}")
    last_report, rows_done, n = time.perf_counter(), 0, 0
    for number, batch in enumerate(_chain(first, iterator) if pending else ()):
        if number < resume_at:
            continue
        with torch.no_grad():
            acts = capture(model, points, partial(forward, batch))
        index_N2 = batch.keep_BS.nonzero()
        for point, writer in pending.items():
            if writer.batches_done > number:
                continue
            rows = acts[point].float().cpu()[batch.keep_BS.cpu()]
            writer.add_batch(number, rows, index_N2, batch.ids_BS)
        rows_done += int(index_N2.shape[0])
        n = number + 1
        if time.perf_counter() - last_report > 10:
            rate = rows_done / max(1e-9, time.perf_counter() - start)
            say(f"cached {n} batches ({rows_done:,} rows, {rate:,.0f} rows/s)")
            last_report = time.perf_counter()
    manifests = {p.name: w.finish({"sources": meta.get("sources", [])})
                 for p, w in writers.items()}
    return CacheBuildResult({p.name: folders[p] for p in points}, manifests,
                            time.perf_counter() - start)


def _chain(first: InputBatch, rest: Iterable[InputBatch]) -> Iterable[InputBatch]:
    yield first
    yield from rest
