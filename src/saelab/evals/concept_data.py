"""Inputs of the concept evaluations: activations of labelled inputs, collected once per model.

An *input* is one labelled unit: an Othello position (one token) or a text (several tokens).
:class:`InputActivations` keeps the activations of every kept token of every input, flat, with
offsets; an SAE encodes the tokens and the codes are pooled per input (mean for probing, as
SAEBench; max for the monosemanticity score, where an input "fires" a latent when any of its
tokens does).

Two model kinds:
- a game LM (``othello``, ``chess`` or a folder): positions of generated games, labelled with
  the board-state properties of ``saelab.boardgame.properties``, split by game;
- any Hugging Face model (a hub id or a local folder, default the packaged MiniLM): texts of
  ``saelab.text.tasks``, read at a hook point (``encoder.layer.3``), special tokens dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError

Pool = str  # "mean" or "max"


@dataclass
class InputActivations:
    """Token activations ``acts_TD`` of N inputs; input i owns rows offsets[i]:offsets[i+1]."""

    acts_TD: Tensor
    offsets: Tensor  # (N + 1,) int64

    @property
    def n_inputs(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def token_input(self) -> Tensor:
        """``(T,)`` the input each token row belongs to."""
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.n_inputs), counts)

    def pool(self, values_TF: Tensor, how: Pool = "mean") -> Tensor:
        """``(N, F)`` per-input mean or max of token-level values."""
        index = self.token_input()
        if how == "mean":
            out = torch.zeros(self.n_inputs, values_TF.shape[1], dtype=values_TF.dtype)
            out.index_add_(0, index, values_TF)
            counts = (self.offsets[1:] - self.offsets[:-1]).clamp_min(1)
            return out / counts[:, None].to(values_TF.dtype)
        if how == "max":
            out = torch.full((self.n_inputs, values_TF.shape[1]), -torch.inf,
                             dtype=values_TF.dtype)
            index_TF = index[:, None].expand_as(values_TF).contiguous()
            return out.scatter_reduce(0, index_TF, values_TF, "amax")
        raise ValueError(f"pool must be 'mean' or 'max', not {how!r}")

    def pooled_raw(self, how: Pool = "mean") -> Tensor:
        return self.pool(self.acts_TD.float(), how)

    @torch.no_grad()
    def pooled_codes(self, sae: SAE, how: Pool = "mean", batch_size: int = 4096) -> Tensor:
        """``(N, M)`` SAE codes of every token, pooled per input."""
        check_sae_width(sae, self.acts_TD.shape[1])
        sae.eval()
        codes = torch.cat([sae.encode(self.acts_TD[i:i + batch_size].float())
                           for i in range(0, self.acts_TD.shape[0], batch_size)])
        return self.pool(codes.float(), how)

    def subset(self, rows: Tensor | np.ndarray) -> InputActivations:
        """The inputs at ``rows`` (in that order)."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        pieces = [self.acts_TD[int(self.offsets[i]):int(self.offsets[i + 1])] for i in rows]
        lengths = torch.tensor([p.shape[0] for p in pieces], dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        return InputActivations(torch.cat(pieces) if pieces else self.acts_TD[:0], offsets)

    @classmethod
    def one_token_each(cls, acts_ND: Tensor) -> InputActivations:
        return cls(acts_ND, torch.arange(acts_ND.shape[0] + 1, dtype=torch.int64))


def check_sae_width(sae: SAE, width: int) -> None:
    if sae.cfg.d_in != width:
        raise ConfigError(f"the SAE expects d_in={sae.cfg.d_in} but these activations have "
                          f"width {width}; evaluate on the model and hook the SAE was trained on")


@dataclass
class LabelledSet:
    """Inputs with binary labels ``labels_NK`` (one column per class or cell), optionally with a
    fixed train/test split (``is_test_N``; None = split at random per seed)."""

    name: str
    inputs: InputActivations
    labels_NK: Tensor  # bool
    class_names: tuple[str, ...]
    is_test_N: Tensor | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.labels_NK.shape[0] != self.inputs.n_inputs:
            raise ValueError(f"{self.name}: {self.inputs.n_inputs} inputs but "
                             f"{self.labels_NK.shape[0]} label rows")
        if self.labels_NK.shape[1] != len(self.class_names):
            raise ValueError(f"{self.name}: {self.labels_NK.shape[1]} label columns but "
                             f"{len(self.class_names)} class names")

    def split(self, seed: int, test_fraction: float = 0.3) -> tuple[Tensor, Tensor]:
        """Row indices of the training and test inputs."""
        if self.is_test_N is not None:
            return (~self.is_test_N).nonzero().flatten(), self.is_test_N.nonzero().flatten()
        order = torch.randperm(self.inputs.n_inputs, generator=torch.Generator().manual_seed(seed))
        n_test = max(1, round(test_fraction * len(order)))
        return order[n_test:].sort().values, order[:n_test].sort().values


# ---------------------------------------------------------------------------- Hugging Face text


@torch.no_grad()
def text_activations(model: torch.nn.Module, tokenizer: Any, hook: str, texts: list[str],
                     max_length: int = 64, batch_size: int = 64, embed: bool = True,
                     progress: Callable[[int, int], None] | None = None
                     ) -> tuple[InputActivations, Tensor | None]:
    """Activations at ``hook`` of every non-special, non-padding token of every text, and (with
    ``embed``) the ``(N, D_out)`` sentence embedding of each text by the same model (mean of the
    final hidden states over its tokens, unit-normalised: what sentence-transformers does for
    MiniLM) from the same forward pass. Texts are truncated to ``max_length`` tokens."""
    from saelab.models.hf import output_hidden
    from saelab.models.hooks import capture, capture_with_output

    pieces, lengths, embeddings = [], [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt",
                          return_special_tokens_mask=True)
        special = batch.pop("special_tokens_mask").bool()
        forward = partial(model, **batch)
        if embed:
            output, captured = capture_with_output(model, [hook], forward)
        else:  # stop the pass at the hook
            output, captured = None, capture(model, [hook], forward)
        acts_BSD = next(iter(captured.values()))
        keep_BS = batch["attention_mask"].bool() & ~special
        for b in range(acts_BSD.shape[0]):
            pieces.append(acts_BSD[b][keep_BS[b]].float())
            lengths.append(int(keep_BS[b].sum()))
        if progress:
            progress(min(len(texts), start + batch_size), len(texts))
        if not embed:
            continue
        hidden = output_hidden(output)
        if hidden is None:
            raise ConfigError("the model's output has no last_hidden_state to embed texts "
                              "with; use an encoder such as the packaged MiniLM")
        mask = batch["attention_mask"].float()[:, :, None]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        embeddings.append(torch.nn.functional.normalize(pooled.float(), dim=1))
    if any(n == 0 for n in lengths):
        empty = [texts[i] for i, n in enumerate(lengths) if n == 0][:3]
        raise ConfigError(f"some texts have no tokens besides special ones (e.g. {empty}); "
                          "drop empty texts")
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64),
                         torch.tensor(lengths, dtype=torch.int64).cumsum(0)])
    return (InputActivations(torch.cat(pieces), offsets),
            torch.cat(embeddings) if embed else None)


def labels_one_hot(labels: list[int], n_classes: int) -> Tensor:
    y = torch.tensor(labels, dtype=torch.int64)
    return torch.nn.functional.one_hot(y, n_classes).bool()


class JsonResult:
    """Mixin of the concept results: strict JSON (:func:`json_ready`), written atomically."""

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self)  # type: ignore[no-any-return]

    def write(self, path: str | Path) -> None:
        from saelab.io import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())


def json_ready(obj: Any) -> Any:
    """A dataclass/dict/list tree as JSON-ready values: NaN and ±inf become null (strict JSON
    has no NaN; every NaN in a concept result comes with a reason beside it)."""
    import dataclasses
    import math

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: json_ready(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    return obj


@torch.no_grad()
def sae_l0(sae: SAE, acts_TD: Tensor, batch_size: int = 4096) -> float:
    """Mean number of nonzero codes per token row (the L0 the results are compared at)."""
    sae.eval()
    total = 0.0
    for i in range(0, acts_TD.shape[0], batch_size):
        total += float((sae.encode(acts_TD[i:i + batch_size].float()) != 0).sum())
    return total / max(1, acts_TD.shape[0])


def load_text_model(model: str = "") -> Any:
    """A Hugging Face model + tokenizer (``saelab.models.LoadedModel``) from a hub id or a
    folder; empty = the packaged MiniLM."""
    from saelab.models.hf import load_hf_model, packaged_minilm_path

    return load_hf_model(model or packaged_minilm_path(), task="base")
