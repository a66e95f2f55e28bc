"""Tokenise documents and pack them into fixed-length contexts.

Documents are tokenised without special tokens, joined into one stream with the separator
token (EOS, or SEP for BERT-style tokenizers) after each document, and cut into contexts of
``context_size`` tokens. With ``prepend_bos`` every context starts with the BOS token (CLS for
BERT-style tokenizers), so the model always sees a well-formed start; the body then holds
``context_size - 1`` tokens. A final partial context is dropped (no padding is ever needed).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.config import ConfigError, option
from saelab.text.readers import read_all

_TOKENIZE_CHUNK = 64  # documents per tokenizer call: fast tokenizers batch well


@dataclass
class TextConfig:
    """How text becomes model inputs and which positions count."""

    context_size: int = option(128, "tokens per context (BOS included)")
    prepend_bos: bool = option(True, "start every context with BOS (CLS for BERT-style "
                               "tokenizers) when the tokenizer has one")
    separate_documents: bool = option(True, "put EOS (SEP for BERT-style tokenizers) after each "
                                      "document when the tokenizer has one")
    text_field: str = option("text", "field/column holding the text in .jsonl, .parquet and "
                             "saved datasets")
    split: str = option("train", "split of a saved DatasetDict")
    exclude_special: bool = option(True, "leave BOS/EOS/CLS/SEP/padding positions out of "
                                   "training and metrics")
    max_norm_multiple: float = option(0.0, "drop activations whose norm exceeds this multiple "
                                      "of the batch's median norm (attention sinks); 0 = off")

    def validate(self) -> None:
        if self.context_size < 2:
            raise ConfigError(f"context_size must be at least 2, got {self.context_size}")
        if self.max_norm_multiple < 0:
            raise ConfigError("max_norm_multiple must be >= 0 (0 turns the filter off)")


def bos_id(tokenizer: Any) -> int | None:
    """The id that starts a context: BOS, else CLS, else None."""
    for name in ("bos_token_id", "cls_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def separator_id(tokenizer: Any) -> int | None:
    """The id put after each document: EOS, else SEP, else None."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def special_ids(tokenizer: Any) -> list[int]:
    """Ids of BOS, EOS, CLS, SEP and padding: the positions excluded by default."""
    names = ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "pad_token_id")
    ids = {getattr(tokenizer, n, None) for n in names}
    return sorted(int(i) for i in ids if i is not None)


def tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def pack_contexts(documents: Iterable[str], tokenizer: Any, cfg: TextConfig) -> Iterator[list[int]]:
    """Contexts of exactly ``cfg.context_size`` token ids, in document order."""
    cfg.validate()
    start = bos_id(tokenizer) if cfg.prepend_bos else None
    sep = separator_id(tokenizer) if cfg.separate_documents else None
    body = cfg.context_size - (start is not None)
    stream: list[int] = []
    docs = iter(documents)
    while chunk := list(itertools.islice(docs, _TOKENIZE_CHUNK)):
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
        while len(stream) >= body:
            head, stream = stream[:body], stream[body:]
            yield head if start is None else [start, *head]


def batch_contexts(contexts: Iterable[Sequence[int]], batch_size: int) -> Iterator[Tensor]:
    """Group contexts into (≤ batch_size) × context_size int64 tensors; the last may be short."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    it = iter(contexts)
    while batch := list(itertools.islice(it, batch_size)):
        yield torch.tensor(batch, dtype=torch.int64)


def token_batches(sources: Sequence[str | Path], tokenizer: Any, cfg: TextConfig,
                  batch_size: int, max_contexts: int = 0) -> Iterator[Tensor]:
    """Token batches (B × S) from text files: read, tokenise, pack, group.

    Deterministic: the same sources and settings always give the same batches, which is what
    makes cache resume and streaming resume exact. ``max_contexts`` > 0 stops after that many.
    """
    if not sources:
        raise ConfigError("no text sources given")
    docs = read_all(sources, text_field=cfg.text_field, split=cfg.split)
    contexts: Iterable[list[int]] = pack_contexts(docs, tokenizer, cfg)
    if max_contexts > 0:
        contexts = itertools.islice(contexts, max_contexts)
    return batch_contexts(contexts, batch_size)
