"""Cache a model's activations over text: one forward pass feeds every hook's cache."""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from saelab.cache.format import CacheError, CacheManifest
from saelab.cache.writer import CacheWriter, WriterSettings
from saelab.config import ConfigError, option
from saelab.lock import folder_lock
from saelab.models.hf import token_forward
from saelab.models.hooks import HookPoint, capture
from saelab.text.mask import kept_rows
from saelab.text.packing import (
    TextConfig,
    pack_contexts,
    special_ids,
    token_batches,
    tokenizer_name,
)
from saelab.text.readers import read_all


@dataclass
class CacheConfig:
    """Options of a caching run (text options live in :class:`TextConfig`)."""

    batch_contexts: int = option(8, "contexts per model forward pass (the resume granularity)")
    max_tokens: int = option(0, "cache at most this many tokens (0 = all the text)")
    dtype: Literal["float32", "float16"] = option("float32", "storage dtype of the activations")
    memory_limit_mb: int = option(2048, "memory budget of the shuffle (sizes its buckets)")
    seed: int = option(0, "seed of the shuffle")
    commit_every_s: float = option(2.0, "record resumable progress at most this often (seconds; "
                                   "0 = after every context batch)")
    device: str = option("cpu", "device the model runs on")

    def validate(self) -> None:
        if self.batch_contexts < 1:
            raise ConfigError(f"batch_contexts must be >= 1, got {self.batch_contexts}")
        if self.max_tokens < 0:
            raise ConfigError("max_tokens must be >= 0 (0 = all the text)")


@dataclass
class CacheBuildResult:
    """What a caching run produced, with its timings."""

    folders: dict[str, Path]  # hook name -> cache folder
    manifests: dict[str, CacheManifest]
    seconds: float

    @property
    def n_tokens(self) -> int:
        return next(iter(self.manifests.values())).n_contexts * next(
            iter(self.manifests.values())).context_size


def cache_folders(out: str | Path, hooks: Sequence[HookPoint]) -> dict[HookPoint, Path]:
    """One hook caches into ``out``; several cache into ``out/<hook name>`` each."""
    out = Path(out)
    if len(hooks) == 1:
        return {hooks[0]: out}
    return {h: out / h.name.replace(":", "_").replace("/", "_") for h in hooks}


def count_contexts(sources: Sequence[str | Path], tokenizer: Any, text: TextConfig,
                   limit: int | None = None) -> int:
    """How many contexts the text packs into, up to ``limit`` (tokenizer only, no model)."""
    docs = read_all(sources, text_field=text.text_field, split=text.split)
    return sum(1 for _ in itertools.islice(pack_contexts(docs, tokenizer, text), limit))


def build_cache(model: nn.Module, tokenizer: Any, sources: Sequence[str | Path],
                hooks: Sequence[HookPoint | str], out: str | Path, cfg: CacheConfig,
                text: TextConfig, *, model_name: str = "",
                forward: Callable[[Tensor], Any] | None = None,
                log: Callable[[str], None] | None = None) -> CacheBuildResult:
    """Run ``model`` over the text and cache the activations at every hook (resumable).

    Rerunning after a crash continues from the last completed context batch; rerunning a
    finished cache returns at once.
    """
    cfg.validate()
    text.validate()
    points = list(dict.fromkeys(HookPoint.parse(h) for h in hooks))
    if not points:
        raise ConfigError("no hooks given: name at least one module path to cache")
    start = time.perf_counter()
    say = log or (lambda msg: print(msg, file=sys.stderr))
    forward = forward or token_forward(model)
    max_contexts = _max_contexts(sources, tokenizer, cfg, text)
    batches = token_batches(sources, tokenizer, text, cfg.batch_contexts, max_contexts)
    first = next(batches, None)
    if first is None:
        raise CacheError(f"the text in {list(map(str, sources))} is too short for one context of "
                         f"{text.context_size} tokens")
    widths = _hook_widths(model, points, forward, first, cfg.device)
    folders = cache_folders(out, points)
    with contextlib.ExitStack() as locks:  # one process per cache folder
        for folder in folders.values():
            locks.enter_context(folder_lock(folder, "activation cache"))
        exclude = special_ids(tokenizer) if text.exclude_special else []
        writers = {p: CacheWriter(folders[p], _settings(p, widths[p], max_contexts, cfg, text,
                                                        model_name, tokenizer, sources, exclude),
                                  commit_every_s=cfg.commit_every_s)
                   for p in points}
        pending = {p: w for p, w in writers.items() if w.scattering}
        if pending:
            resume_at = min(w.batches_done for w in pending.values())
            if resume_at:
                say(f"resuming the cache at context batch {resume_at}")
            _scatter(model, forward, itertools.chain([first], batches), pending, resume_at, cfg,
                     text, exclude, say)
        manifests = {}
        for point, writer in writers.items():
            manifests[point.name] = writer.finish({"sources": [str(s) for s in sources]})
        return CacheBuildResult({p.name: folders[p] for p in points}, manifests,
                                time.perf_counter() - start)


def _max_contexts(sources: Sequence[str | Path], tokenizer: Any, cfg: CacheConfig,
                  text: TextConfig) -> int:
    # the exact count sizes the shuffle buckets; tokenising twice is cheap next to the model
    limit = math.ceil(cfg.max_tokens / text.context_size) if cfg.max_tokens else None
    return count_contexts(sources, tokenizer, text, limit)


def _hook_widths(model: nn.Module, points: list[HookPoint], forward: Callable[[Tensor], Any],
                 tokens_BS: Tensor, device: str) -> dict[HookPoint, int]:
    with torch.no_grad():
        acts = capture(model, points, lambda: forward(tokens_BS[:1].to(device)))
    return {p: int(a.shape[-1]) for p, a in acts.items()}


def _settings(point: HookPoint, width: int, max_contexts: int, cfg: CacheConfig,
              text: TextConfig, model_name: str, tokenizer: Any,
              sources: Sequence[str | Path], exclude: list[int]) -> WriterSettings:
    meta = {"model": model_name, "hook": point.name, "tokenizer": tokenizer_name(tokenizer),
            "text": asdict(text), "excluded_token_ids": exclude,
            "batch_contexts": cfg.batch_contexts, "sources": [str(s) for s in sources]}
    return WriterSettings(width=width, max_rows=max_contexts * text.context_size,
                          context_size=text.context_size, dtype=cfg.dtype,
                          memory_limit_mb=cfg.memory_limit_mb, seed=cfg.seed, meta=meta)


def _scatter(model: nn.Module, forward: Callable[[Tensor], Any], batches: Iterator[Tensor],
             writers: dict[HookPoint, CacheWriter], resume_at: int, cfg: CacheConfig,
             text: TextConfig, exclude: list[int], say: Callable[[str], None]) -> None:
    points = list(writers)
    last_report = time.perf_counter()
    tokens_done = 0
    for number, tokens_BS in enumerate(batches):
        if number < resume_at:
            continue  # already cached: the batches are deterministic, so skip by count
        with torch.no_grad():
            acts = capture(model, points, partial(forward, tokens_BS.to(cfg.device)))
        for point, writer in writers.items():
            if writer.batches_done > number:
                continue  # this hook committed the batch before the crash; others had not
            acts_ND, index_N2 = kept_rows(acts[point].cpu(), tokens_BS, exclude,
                                          text.max_norm_multiple)
            writer.add_batch(number, acts_ND, index_N2, tokens_BS)
        tokens_done += tokens_BS.numel()
        if time.perf_counter() - last_report > 10:
            say(f"cached {number + 1} batches ({tokens_done:,} new tokens)")
            last_report = time.perf_counter()
