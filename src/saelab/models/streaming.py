"""Stream activations from a model straight into the trainer, without a cache.

:class:`ModelSource` is an :class:`~saelab.data.base.ActivationSource`: it reads text, runs the
model in context batches (stopping after the hook), keeps the counted positions, passes the
rows through a seeded shuffle buffer and cuts them into training batches. The stream is a pure
function of (text, settings, seed), so ``batches(size, start_batch)`` resumes exactly — by
regenerating and skipping the batches already trained on, which costs model time. For long
runs, or more than one epoch, cache the activations first (``saelab cache``).

Several hooks, one model pass: :func:`model_sources` returns one source per hook, all fed by a
single forward pass per context batch (a shared producer hands each hook its rows). The
sources must be consumed together — zipped in one loop, or one trainer per hook in threads via
:func:`fit_together` — because rows produced for a hook wait in its queue until its consumer
takes them. A consumer that runs ahead waits for the others (bounded queues); a finished or
dead consumer stops receiving rows; one that can never catch up (read by the same thread, or
never started within ``start_timeout_s``) raises an error naming its hook instead of hanging.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saelab.data.base import DataError
from saelab.models.hf import token_forward
from saelab.models.hooks import HookPoint, capture
from saelab.text.mask import kept_rows
from saelab.text.packing import TextConfig, special_ids, token_batches


class ModelPass:
    """Context batches through the model, read at several hooks; loops over the text forever."""

    def __init__(self, model: nn.Module, tokenizer: Any, sources: Sequence[str | Path],
                 hooks: Sequence[HookPoint | str], text: TextConfig, *, batch_contexts: int = 8,
                 device: str = "cpu", forward: Callable[[Tensor], Any] | None = None) -> None:
        text.validate()
        self.model, self.tokenizer, self.sources = model, tokenizer, list(sources)
        self.hooks = list(dict.fromkeys(HookPoint.parse(h) for h in hooks))
        self.text, self.batch_contexts, self.device = text, batch_contexts, device
        self.forward = forward or token_forward(model)
        self.exclude = special_ids(tokenizer) if text.exclude_special else []

    def token_batches(self) -> Iterator[Tensor]:
        return token_batches(self.sources, self.tokenizer, self.text, self.batch_contexts)

    def run(self, tokens_BS: Tensor) -> dict[HookPoint, Tensor]:
        """Kept rows (N × D, float32, CPU) at every hook for one batch of contexts."""
        with torch.no_grad():
            acts = capture(self.model, self.hooks,
                           lambda: self.forward(tokens_BS.to(self.device)))
        return {p: kept_rows(acts[p].float().cpu(), tokens_BS, self.exclude,
                             self.text.max_norm_multiple)[0] for p in self.hooks}

    def rows(self) -> Iterator[dict[HookPoint, Tensor]]:
        """Rows per hook, batch after batch, epoch after epoch."""
        while True:
            empty = True
            for tokens_BS in self.token_batches():
                empty = False
                yield self.run(tokens_BS)
            if empty:
                raise DataError(f"the text in {self.sources} is too short for one context of "
                                f"{self.text.context_size} tokens")

    def widths(self) -> dict[HookPoint, int]:
        first = next(self.token_batches(), None)
        if first is None:
            raise DataError(f"the text in {self.sources} is too short for one context")
        with torch.no_grad():
            acts = capture(self.model, self.hooks, lambda: self.forward(first[:1].to(self.device)))
        return {p: int(a.shape[-1]) for p, a in acts.items()}


def shuffled_batches(chunks: Iterator[Tensor], batch_size: int, buffer_rows: int,
                     seed: int) -> Iterator[Tensor]:
    """Re-batch row chunks through a shuffle buffer of ``buffer_rows`` (0 = no shuffling).

    When the buffer is full it is permuted and half of it is emitted as batches; the rest stays
    to mix with new rows. Deterministic for a given chunk stream and seed.
    """
    generator = torch.Generator().manual_seed(seed)
    pool: list[Tensor] = []
    have = 0
    threshold = max(buffer_rows, batch_size)
    for chunk in chunks:
        pool.append(chunk)
        have += chunk.shape[0]
        if have < threshold:
            continue
        rows = torch.cat(pool)
        if buffer_rows > 0:
            rows = rows[torch.randperm(rows.shape[0], generator=generator)]
        emit = rows.shape[0] // 2 if buffer_rows > 0 else rows.shape[0]
        emit = max(batch_size, emit - emit % batch_size)
        for start in range(0, emit, batch_size):
            yield rows[start:start + batch_size]
        pool, have = [rows[emit:]], rows.shape[0] - emit


class ModelSource:
    """Training batches of activations at one hook, computed on the fly from text."""

    def __init__(self, model_pass: ModelPass, hook: HookPoint | str, *,
                 shuffle_buffer_rows: int = 32768, seed: int = 0,
                 shared: _SharedPass | None = None) -> None:
        self.model_pass = model_pass
        self.hook = HookPoint.parse(hook)
        if self.hook not in model_pass.hooks:
            raise DataError(f"hook {self.hook} is not read by this model pass "
                            f"(it reads {[str(h) for h in model_pass.hooks]})")
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.seed = seed
        self._shared = shared
        self._d_in: int | None = None

    @property
    def d_in(self) -> int:
        if self._d_in is None:
            self._d_in = self.model_pass.widths()[self.hook]
        return self._d_in

    def _chunks(self) -> Iterator[Tensor]:
        if self._shared is not None:
            return self._shared.chunks(self.hook)
        return (rows[self.hook] for rows in self.model_pass.rows())

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        stream = shuffled_batches(self._chunks(), batch_size, self.shuffle_buffer_rows, self.seed)
        return itertools.islice(stream, start_batch, None)

    def sample(self, n: int) -> Tensor:
        """Rows of the first context batches (an independent short model pass)."""
        rows: list[Tensor] = []
        have = 0
        for tokens_BS in self.model_pass.token_batches():
            rows.append(self.model_pass.run(tokens_BS)[self.hook])
            have += rows[-1].shape[0]
            if have >= n:
                break
        if not rows:
            raise DataError("the text yielded no contexts")
        return torch.cat(rows)[:n]


class _SharedPass:
    """One producer (a ModelPass) feeding one bounded queue per hook.

    Every hook gets every chunk (also hooks whose consumer has not started yet), so each
    hook's stream is the same whatever the threads' timing.
    """

    def __init__(self, model_pass: ModelPass, max_queued_chunks: int,
                 start_timeout_s: float) -> None:
        self._producer = model_pass.rows()
        self._queues: dict[HookPoint, deque[Tensor]] = {h: deque() for h in model_pass.hooks}
        self._consumers: dict[HookPoint, threading.Thread | None] = dict.fromkeys(model_pass.hooks)
        self._closed: set[HookPoint] = set()
        self._max = max_queued_chunks
        self._start_timeout_s = start_timeout_s
        self._cond = threading.Condition()

    def chunks(self, hook: HookPoint) -> Iterator[Tensor]:
        with self._cond:
            if self._consumers[hook] is not None or hook in self._closed:
                raise DataError(f"the shared model pass already streamed hook {hook}; a shared "
                                "pass streams once — call model_sources() again to start over")
            self._consumers[hook] = threading.current_thread()
        try:
            while True:
                with self._cond:
                    self._fill(hook)
                    chunk = self._queues[hook].popleft()
                    self._cond.notify_all()
                yield chunk
        finally:
            with self._cond:
                self._closed.add(hook)
                self._queues[hook].clear()
                self._cond.notify_all()

    def _listening(self, hook: HookPoint) -> bool:
        consumer = self._consumers[hook]
        return hook not in self._closed and (consumer is None or consumer.is_alive())

    def _fill(self, hook: HookPoint) -> None:
        """Wait until ``hook`` has a chunk, running the model when no other queue is full.

        A consumer with rows never waits, so a waiting consumer only ever waits for one that
        is draining its queue — or for one that has not started yet, which is given
        ``start_timeout_s`` to start.
        """
        deadline = time.monotonic() + self._start_timeout_s
        while not self._queues[hook]:
            blocked = [h for h in self._queues if h != hook and self._listening(h)
                       and len(self._queues[h]) >= self._max]
            if not blocked:
                produced = next(self._producer)
                for h in self._queues:
                    if self._listening(h):
                        self._queues[h].append(produced[h])
                continue
            if any(self._consumers[h] is threading.current_thread() for h in blocked):
                raise DataError(f"hook {blocked[0]}'s source is {self._max} chunks behind and is "
                                "read by this same thread; consume the sources of one shared "
                                "pass together (zip them, or use fit_together)")
            unstarted = [h for h in blocked if self._consumers[h] is None]
            if unstarted and time.monotonic() > deadline:
                raise DataError(f"the source of hook {unstarted[0]} has not started reading after "
                                f"{self._start_timeout_s:.0f} s and {self._max} chunks wait for "
                                "it; consume the sources of one shared pass together (zip them, "
                                "or use fit_together)")
            self._cond.wait(timeout=0.5)  # another thread drains its queue; re-check liveness


def model_sources(model: nn.Module, tokenizer: Any, sources: Sequence[str | Path],
                  hooks: Sequence[HookPoint | str], text: TextConfig, *,
                  batch_contexts: int = 8, shuffle_buffer_rows: int = 32768, seed: int = 0,
                  device: str = "cpu", forward: Callable[[Tensor], Any] | None = None,
                  max_queued_chunks: int = 64,
                  start_timeout_s: float = 300.0) -> dict[str, ModelSource]:
    """One :class:`ModelSource` per hook, all fed by one model forward pass per context batch.

    Consume them together (see the module docstring); for a single hook this is the same as a
    plain ModelSource.
    """
    model_pass = ModelPass(model, tokenizer, sources, hooks, text, batch_contexts=batch_contexts,
                           device=device, forward=forward)
    shared = (_SharedPass(model_pass, max_queued_chunks, start_timeout_s)
              if len(model_pass.hooks) > 1 else None)
    return {h.name: ModelSource(model_pass, h, shuffle_buffer_rows=shuffle_buffer_rows,
                                seed=seed, shared=shared) for h in model_pass.hooks}


def fit_together(trainers: Sequence[Any]) -> list[Any]:
    """Run ``trainer.fit()`` for several trainers at once (one thread each), e.g. one per hook
    of a shared model pass; returns their results in order and re-raises the first error."""
    results: list[Any] = [None] * len(trainers)
    errors: list[BaseException | None] = [None] * len(trainers)

    def work(i: int) -> None:
        try:
            results[i] = trainers[i].fit()
        except BaseException as err:  # re-raised in the caller's thread below
            errors[i] = err

    threads = [threading.Thread(target=work, args=(i,), name=f"saelab-fit-{i}")
               for i in range(len(trainers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for err in errors:
        if err is not None:
            raise err
    return results
