"""Run typed text through the model and the SAE: which latents fire on which token, and
steered vs unsteered generation for one latent (the feature page's steering box)."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from saelab.architectures.base import SAE
from saelab.config import ConfigError
from saelab.features.sources import HFCodec, LoadedSpec, ModelSpec, load_model
from saelab.steer import Intervention, LatentEdit, steer_text
from saelab.steer.edits import EDIT_OPS, EditOp

MAX_TEXT_CHARS = 5000
MAX_PROMPT_CHARS = 1000
MAX_NEW_TOKENS = 64
MAX_EDIT_VALUE = 1e4
DEFAULT_EDIT_VALUE = {"add": 4.0, "clamp": 4.0, "scale": 2.0, "zero": 0.0}


class SteerUnavailable(ValueError):
    """Steering cannot run with this explorer's model (none, a game LM or a non-causal LM)."""


@dataclass(frozen=True)
class SteerRequest:
    """One submission of the steering box, checked: a prompt, one edit of the page's latent
    (add α·d_j, clamp, scale, zero) and a bounded number of greedy new tokens."""

    prompt: str
    op: EditOp = "add"
    value: float = 4.0
    max_new_tokens: int = 16

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> SteerRequest:
        """From form / query fields ``prompt``, ``edit``, ``value``, ``max_new_tokens``; raises
        ValueError naming the bad field and what it accepts."""
        prompt = args.get("prompt", "")
        if not prompt.strip():
            raise ValueError("type a prompt to steer")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters; shorten it")
        op = args.get("edit", "add") or "add"
        if op not in EDIT_OPS:
            raise ValueError(f"unknown edit {op!r}; choose one of {list(EDIT_OPS)}")
        raw = (args.get("value", "") or "").strip()
        try:
            value = float(raw) if raw else DEFAULT_EDIT_VALUE[op]
        except ValueError:
            raise ValueError(f"value {raw!r} is not a number; give e.g. 4 or -2.5") from None
        if not math.isfinite(value) or abs(value) > MAX_EDIT_VALUE:
            raise ValueError(f"value must be a finite number between {-MAX_EDIT_VALUE:g} and "
                             f"{MAX_EDIT_VALUE:g}, got {raw!r}")
        raw_tokens = (args.get("max_new_tokens", "") or "16").strip()
        if not raw_tokens.isdigit() or not 1 <= int(raw_tokens) <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, "
                             f"got {raw_tokens!r}")
        return cls(prompt, op, 0.0 if op == "zero" else value, int(raw_tokens))  # type: ignore[arg-type]


class LiveEncoder:
    """Loads the model on first use (once, under a lock) and encodes typed text."""

    def __init__(self, sae: SAE, spec: ModelSpec, max_tokens: int = 256,
                 loaded: LoadedSpec | None = None) -> None:
        if spec.kind == "none":
            raise ConfigError("the store records no model to run text through")
        self.sae, self.spec, self.max_tokens = sae.eval(), spec, max_tokens
        self._loaded = loaded
        self._lock = threading.Lock()
        # steering installs hooks on the shared model: no other request may run it meanwhile
        self._run_lock = threading.Lock()

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
        with self._run_lock:
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

    def steer_note(self) -> str:
        """Why steering cannot run here ('' when it can, or may: an unloaded HF model is only
        known to be causal once loaded, and a steering request then says so)."""
        if self.spec.kind != "hf":
            return (f"steering generates text, which needs a Hugging Face causal LM; this store's "
                    f"model is a {self.spec.kind} model ({self.spec.name or self.spec.game})")
        if self._loaded is not None and not self._loaded.is_causal_lm:
            return (f"steering generates text, which needs a causal LM; {self.spec.name} is not "
                    "one (an encoder such as MiniLM): use saelab.steer.steering around its "
                    "forward pass in Python")
        return ""

    def steer(self, latent: int, request: SteerRequest) -> dict[str, Any]:
        """Steered vs unsteered greedy continuations of the prompt with one edit of ``latent``
        at the store's hook (the SAE's error term kept), and the next-token KL."""
        if note := self.steer_note():
            raise SteerUnavailable(note)
        loaded = self.loaded()
        if note := self.steer_note():
            raise SteerUnavailable(note)
        if not isinstance(loaded.codec, HFCodec):
            raise SteerUnavailable("steering needs the model's Hugging Face tokenizer")
        tokenizer = loaded.codec.tokenizer
        n_prompt = len(tokenizer(request.prompt)["input_ids"])
        limit = min(self.max_tokens, loaded.max_positions - request.max_new_tokens)
        if n_prompt > limit:
            raise ValueError(f"the prompt has {n_prompt} tokens; the steering box takes at most "
                             f"{limit} (with {request.max_new_tokens} new tokens): shorten it")
        edit = LatentEdit(latent, request.op, request.value)
        iv = Intervention(self.sae, self.spec.hook, [edit])
        with self._run_lock:
            result = steer_text(loaded.model, tokenizer, request.prompt, [iv],
                                max_new_tokens=request.max_new_tokens)
        return {"latent": latent, "edit": edit.describe(), "hook": self.spec.hook,
                **result.to_dict()}
