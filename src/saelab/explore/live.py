"""Run typed text through the model and the SAE: which latents fire on which token."""

from __future__ import annotations

import threading
from typing import Any

import torch

from saelab.architectures.base import SAE
from saelab.config import ConfigError
from saelab.features.sources import LoadedSpec, ModelSpec, load_model

MAX_TEXT_CHARS = 5000


class LiveEncoder:
    """Loads the model on first use (once, under a lock) and encodes typed text."""

    def __init__(self, sae: SAE, spec: ModelSpec, max_tokens: int = 256,
                 loaded: LoadedSpec | None = None) -> None:
        if spec.kind == "none":
            raise ConfigError("the store records no model to run text through")
        self.sae, self.spec, self.max_tokens = sae.eval(), spec, max_tokens
        self._loaded = loaded
        self._lock = threading.Lock()

    def loaded(self) -> LoadedSpec:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_model(self.spec)
            return self._loaded

    def fire(self, text: str, per_token: int = 8) -> dict[str, Any]:
        """Tokens of ``text`` and, per token, the firing latents (largest first), plus every
        firing latent's max and count over the text."""
        if not text.strip():
            raise ValueError("type some text to run through the model")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"the text is longer than {MAX_TEXT_CHARS} characters; shorten it")
        loaded = self.loaded()
        ids = loaded.codec.encode(text)[:min(self.max_tokens, loaded.max_positions)]
        if not ids:
            raise ValueError("the text has no tokens")
        acts_SD = loaded.hook_acts(ids)
        with torch.no_grad():
            codes = self.sae.encode(acts_SD)
        # special tokens (BOS, ...) were left out of the store's statistics: leave them out here
        counted = torch.tensor([i not in loaded.codec.special for i in ids])
        codes = codes * counted[:, None]
        tokens = loaded.codec.token_text(ids)
        rows = []
        for s in range(codes.shape[0]):
            vals, idx = codes[s].topk(min(per_token, codes.shape[1]))
            rows.append([{"latent": int(i), "value": round(float(v), 4)}
                         for v, i in zip(vals, idx, strict=True) if v > 0])
        fired = codes > 0
        counts = fired.sum(0)
        maxes = codes.max(0).values
        order = torch.argsort(maxes, descending=True)
        latents = [{"latent": int(m), "max": round(float(maxes[m]), 4), "count": int(counts[m])}
                   for m in order.tolist() if counts[m] > 0]
        return {"tokens": tokens, "token_ids": ids, "per_token": rows, "latents": latents}
