"""Sentence embeddings for the offline embedding scorer: mean-pooled, L2-normalised MiniLM
(the sentence-transformers recipe of all-MiniLM-L6-v2), from the packaged model by default."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


class SentenceEmbedder:
    """``embed(texts)`` → N × D unit vectors."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 32,
                 max_tokens: int = 128) -> None:
        from saelab.models.hf import load_hf_model, packaged_minilm_path

        loaded = load_hf_model(model_path or packaged_minilm_path(), task="base")
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.name = Path(loaded.name).name if Path(loaded.name).exists() else loaded.name
        self.batch_size, self.max_tokens = batch_size, max_tokens

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start: start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_tokens,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)
