"""Run text through the real model and SAE and read one latent's activation per token.

:class:`ActivationProbe` is what SAGE's RUN_TEST step and the generation scorer call, and what
:func:`collect_examples` uses to gather a latent's contexts from a corpus. Token pieces come
from incremental decoding, so they concatenate to the decoded text exactly, for WordPiece and
byte-level tokenizers alike.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.interp.examples import Context, LatentExamples, SamplingConfig, split_examples
from saelab.models.hf import token_forward
from saelab.models.hooks import HookPoint, capture, check_width
from saelab.text.packing import TextConfig, bos_id, pack_contexts, special_ids
from saelab.text.readers import read_all


@dataclass
class ProbeRun:
    """One probe text as the model saw it: token pieces and every requested latent's
    activation per token (special tokens left out)."""

    text: str
    tokens: list[str]
    activations: dict[int, list[float]]

    def context(self, latent: int) -> Context:
        return Context(self.tokens, self.activations[latent])

    def max_activation(self, latent: int) -> float:
        return max(self.activations[latent], default=0.0)


class ActivationProbe:
    """A model, its tokenizer, the hook point an SAE reads, and the SAE."""

    def __init__(self, model: nn.Module, tokenizer: Any, hook: HookPoint | str, sae: SAE, *,
                 max_tokens: int = 128) -> None:
        self.model, self.tokenizer, self.sae = model, tokenizer, sae
        self.hook = HookPoint.parse(hook)
        self.max_tokens = max_tokens
        self._forward = token_forward(model)
        self._bos = bos_id(tokenizer)
        self._special = set(special_ids(tokenizer))
        self._checked = False

    @classmethod
    def load(cls, model_name: str | Path, hook: str, sae_path: str | Path,
             max_tokens: int = 128) -> ActivationProbe:
        from saelab.io import load
        from saelab.models.hf import load_hf_model

        loaded = load_hf_model(model_name)
        return cls(loaded.model, loaded.tokenizer, hook, load(sae_path), max_tokens=max_tokens)

    def token_ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self._bos is not None:
            ids = [self._bos, *ids]
        return ids[: self.max_tokens]

    @torch.no_grad()
    def codes(self, ids_BS: Tensor) -> Tensor:
        """SAE codes (B × S × F) at the hook for a batch of token ids."""
        acts = capture(self.model, [self.hook], lambda: self._forward(ids_BS))[self.hook]
        if not self._checked:
            check_width(self.hook, acts.shape[-1], self.sae.cfg.d_in)
            self._checked = True
        dtype = next(self.sae.parameters()).dtype
        return self.sae.encode(acts.reshape(-1, acts.shape[-1]).to(dtype)).reshape(
            *acts.shape[:-1], -1)

    def run(self, texts: Sequence[str], latents: Sequence[int]) -> list[ProbeRun]:
        """Each text through model and SAE, one at a time (no padding can leak in)."""
        out = []
        for text in texts:
            ids = self.token_ids(text)
            codes = self.codes(torch.tensor([ids]))[0]
            keep = [i for i, t in enumerate(ids) if t not in self._special]
            pieces = token_pieces(self.tokenizer, ids)
            acts = {int(lat): [float(codes[i, lat]) for i in keep] for lat in latents}
            out.append(ProbeRun(text, [pieces[i] for i in keep], acts))
        return out


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Per-token strings that concatenate to ``decode(ids)``: piece i is the growth of the
    decoded prefix when token i is added (special tokens decode to their own text)."""
    pieces, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]), clean_up_tokenization_spaces=False)
        if text.startswith(previous):
            pieces.append(text[len(previous):])
        else:  # a multi-byte character completed: the prefix was rewritten
            pieces.append(tokenizer.decode([ids[i]], clean_up_tokenization_spaces=False))
        previous = text
    return pieces


@dataclass
class CollectConfig:
    """Which text and how much of it to read when gathering examples from a corpus."""

    max_tokens: int = 50_000
    window: int = 32
    batch_size: int = 32


def collect_examples(probe: ActivationProbe, sources: Iterable[str | Path], latents: Sequence[int],
                     cfg: CollectConfig | None = None,
                     sampling: SamplingConfig | None = None) -> dict[int, LatentExamples]:
    """Read ``cfg.max_tokens`` tokens of text in windows of ``cfg.window`` tokens, encode them
    with the SAE and split each latent's windows into explain and score sets. Latents that fire
    in fewer than ``sampling.min_activating`` windows are left out of the result."""
    cfg = cfg or CollectConfig()
    sampling = sampling or SamplingConfig()
    latents = [int(lat) for lat in latents]
    text_cfg = TextConfig(context_size=cfg.window + (1 if probe._bos is not None else 0))
    documents = read_all([str(s) for s in sources])
    windows: list[list[int]] = []
    for ids in pack_contexts(documents, probe.tokenizer, text_cfg):
        windows.append(ids)
        if len(windows) * cfg.window >= cfg.max_tokens:
            break
    if not windows:
        raise ValueError("no text to collect examples from: pass at least one non-empty source")
    per_latent: dict[int, list[Context]] = {lat: [] for lat in latents}
    # Non-activating windows: a uniform reservoir sample per latent keeps memory bounded.
    reservoir: dict[int, list[Context]] = {lat: [] for lat in latents}
    seen_inactive = dict.fromkeys(latents, 0)
    cap = 4 * (sampling.n_negatives + sampling.n_held_out_negatives)
    rng = random.Random(sampling.seed)
    fired = dict.fromkeys(latents, 0)
    n_tokens = 0
    for start in range(0, len(windows), cfg.batch_size):
        batch = windows[start: start + cfg.batch_size]
        codes = probe.codes(torch.tensor(batch))[..., latents]  # B × S × L
        for b, ids in enumerate(batch):
            keep = [i for i, t in enumerate(ids) if t not in probe._special]
            pieces = token_pieces(probe.tokenizer, ids)
            n_tokens += len(keep)
            for j, lat in enumerate(latents):
                acts = [float(codes[b, i, j]) for i in keep]
                n_fired = sum(a > 0 for a in acts)
                fired[lat] += n_fired
                context = Context([pieces[i] for i in keep], acts)
                if n_fired:
                    per_latent[lat].append(context)
                    continue
                seen_inactive[lat] += 1
                if len(reservoir[lat]) < cap:
                    reservoir[lat].append(context)
                elif (slot := rng.randrange(seen_inactive[lat])) < cap:
                    reservoir[lat][slot] = context
    out = {}
    for lat in latents:
        ex = split_examples(lat, per_latent[lat] + reservoir[lat], sampling, fired[lat] / max(1, n_tokens))
        if ex is not None:
            out[lat] = ex
    return out
