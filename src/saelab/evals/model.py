"""Evaluate an SAE inside its model: the reconstruction spliced in at its hook.

Per context batch the model runs three times: clean (reading the hook), with the SAE's
reconstruction in place of the hooked activation, and with that activation zeroed. From these:

- CE loss recovered = (CE_zero − CE_SAE) / (CE_zero − CE_clean), next-token cross-entropy;
- KL score = (KL_zero − KL_SAE) / KL_zero, with KL(p_clean ‖ p_spliced) per token, summed over
  the vocabulary, from log_softmax;
- the core metrics (L0, EV, MSE, cosine, shrinkage, density) on the hooked activations;
- for encoders without logits: cosine of the mean-pooled final hidden states (sentence
  embeddings) between the clean and spliced runs.

Positions excluded by the text settings (BOS/EOS/CLS/SEP/padding, and norm outliers when
``max_norm_multiple`` > 0) are left un-spliced in both the SAE and the zero-ablation runs and
are counted in no metric. CE and KL are counted at the predicting positions t < S−1 whose own
activation was spliced. Formulas and choices: docs/eval_model.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option
from saelab.evals.core import CoreEvalResult, density_histogram
from saelab.io import atomic_write_json
from saelab.metrics.core import CoreMetrics, CoreMetricsAccumulator
from saelab.models.hf import load_hf_model, output_hidden, output_logits, token_forward
from saelab.models.hooks import HookPoint, capture_with_output, check_width, splice
from saelab.text.mask import norm_outlier_mask, position_mask
from saelab.text.packing import TextConfig, special_ids, token_batches

Downstream = Literal["auto", "ce_kl", "embedding", "none"]


@dataclass
class ModelEvalConfig:
    max_tokens: int = option(32_768, "evaluate on about this many tokens (whole contexts)")
    batch_contexts: int = option(8, "contexts per forward pass")
    dense_threshold: float = option(0.1, "firing density above which a latent counts as dense")
    downstream: Downstream = option("auto", "ce_kl (causal LMs), embedding (encoders: cosine of "
                                    "mean-pooled outputs), none, or auto (from the output)")
    device: str = option("cpu", "device for the model and the SAE")

    def validate(self) -> None:
        if self.max_tokens <= 0 or self.batch_contexts <= 0:
            raise ConfigError("max_tokens and batch_contexts must be positive")


@dataclass
class DownstreamMetrics:
    """Model-output metrics over ``n_predictions`` counted positions (NaN when undefined)."""

    n_predictions: int
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_loss_recovered: float
    kl_sae: float
    kl_zero: float
    kl_score: float


@dataclass
class EmbeddingMetrics:
    """Mean over contexts of cos(mean-pooled clean output, mean-pooled spliced output)."""

    n_contexts: int
    cosine_sae: float
    cosine_zero: float


@dataclass
class ModelEvalResult:
    sae_path: str
    model: str
    hook: str
    settings: dict[str, Any]
    metrics: CoreMetrics
    downstream: DownstreamMetrics | None
    embedding: EmbeddingMetrics | None

    def to_dict(self) -> dict[str, Any]:
        return {"sae": self.sae_path, "model": self.model, "hook": self.hook,
                "settings": self.settings,
                "metrics": self.metrics.to_dict(include_density=True),
                "downstream": asdict(self.downstream) if self.downstream else None,
                "embedding": asdict(self.embedding) if self.embedding else None}

    def scalars(self) -> list[tuple[str, float]]:
        rows: list[tuple[str, float]] = [
            (k, float(v)) for k, v in self.metrics.to_dict().items()  # type: ignore[arg-type]
        ]
        for part in (self.downstream, self.embedding):
            if part is not None:
                rows += [(k, float(v)) for k, v in asdict(part).items()]
        return rows

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    def density_plot(self, path: Path) -> Path:
        return density_histogram(CoreEvalResult(self.sae_path, f"{self.model}@{self.hook}",
                                                self.metrics), path)


class _Sums:
    """Float64 running sums of per-position CE/KL and of embedding cosines."""

    def __init__(self) -> None:
        self.n = 0
        self.ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
        self.kl = {"sae": 0.0, "zero": 0.0}
        self.n_contexts = 0
        self.cos = {"sae": 0.0, "zero": 0.0}

    def downstream(self) -> DownstreamMetrics | None:
        if self.n == 0:
            return None
        ce = {k: v / self.n for k, v in self.ce.items()}
        kl = {k: v / self.n for k, v in self.kl.items()}
        return DownstreamMetrics(
            n_predictions=self.n, ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"],
            ce_loss_recovered=_ratio(ce["zero"] - ce["sae"], ce["zero"] - ce["clean"]),
            kl_sae=kl["sae"], kl_zero=kl["zero"], kl_score=_ratio(kl["zero"] - kl["sae"], kl["zero"]))

    def embedding(self) -> EmbeddingMetrics | None:
        if self.n_contexts == 0:
            return None
        return EmbeddingMetrics(self.n_contexts, self.cos["sae"] / self.n_contexts,
                                self.cos["zero"] / self.n_contexts)


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def per_token_ce(logits_BSV: Tensor, tokens_BS: Tensor) -> Tensor:
    """CE of predicting token t+1 at position t, (B × S−1), float64."""
    logp = F.log_softmax(logits_BSV[:, :-1].double(), dim=-1)
    return -logp.gather(-1, tokens_BS[:, 1:].unsqueeze(-1)).squeeze(-1)


def per_token_kl(clean_BSV: Tensor, other_BSV: Tensor) -> Tensor:
    """KL(p_clean ‖ p_other) at positions t < S−1, summed over the vocabulary, float64."""
    logp = F.log_softmax(clean_BSV[:, :-1].double(), dim=-1)
    logq = F.log_softmax(other_BSV[:, :-1].double(), dim=-1)
    return F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)


def _mean_pool_cosine(clean_BSD: Tensor, other_BSD: Tensor) -> Tensor:
    return F.cosine_similarity(clean_BSD.double().mean(1), other_BSD.double().mean(1), dim=-1)


@torch.no_grad()
def evaluate_on_model(model: nn.Module, sae: SAE, hook: HookPoint | str,
                      token_batches: Iterable[Tensor], exclude_ids: list[int],
                      cfg: ModelEvalConfig, *, max_norm_multiple: float = 0.0,
                      forward: Callable[[Tensor], Any] | None = None,
                      input_hook: HookPoint | str | None = None,
                      ) -> tuple[CoreMetrics, DownstreamMetrics | None, EmbeddingMetrics | None]:
    """Splice ``sae`` into ``model`` at ``hook`` over the token batches and measure.

    A transcoder reads ``input_hook`` (e.g. an MLP's input) and its prediction replaces the
    activation at ``hook`` (the MLP's output); the core metrics then compare that prediction
    with the clean activation at ``hook``.
    """
    cfg.validate()
    point = HookPoint.parse(hook)
    in_point = HookPoint.parse(input_hook) if input_hook else point
    forward = forward or token_forward(model)
    sae = sae.to(cfg.device).eval()
    acc = CoreMetricsAccumulator(sae.cfg.d_sae, dense_threshold=cfg.dense_threshold)
    sums = _Sums()
    seen_tokens = 0
    for tokens_BS in token_batches:
        if seen_tokens >= cfg.max_tokens:
            break
        tokens_BS = tokens_BS.to(cfg.device)
        seen_tokens += tokens_BS.numel()
        _evaluate_batch(model, sae, (in_point, point), tokens_BS, exclude_ids,
                        max_norm_multiple, cfg, forward, acc, sums)
    if seen_tokens == 0:
        raise ConfigError("no token batches to evaluate on (is the text too short for one context?)")
    return acc.compute(), sums.downstream(), sums.embedding()


def _evaluate_batch(model: nn.Module, sae: SAE, points: tuple[HookPoint, HookPoint],
                    tokens_BS: Tensor, exclude_ids: list[int], max_norm_multiple: float,
                    cfg: ModelEvalConfig, forward: Callable[[Tensor], Any],
                    acc: CoreMetricsAccumulator, sums: _Sums) -> None:
    in_point, point = points  # the SAE reads in_point, its output replaces point
    clean_out, captured = capture_with_output(model, list(dict.fromkeys(points)),
                                              lambda: forward(tokens_BS))
    acts_BSD, inputs_BSD = captured[point], captured[in_point]
    check_width(in_point, inputs_BSD.shape[-1], sae.cfg.d_in)
    keep_BS = position_mask(tokens_BS, exclude_ids)
    keep_BS[keep_BS.clone()] = norm_outlier_mask(acts_BSD[keep_BS], max_norm_multiple)
    acts_ND, inputs_ND = acts_BSD[keep_BS].float(), inputs_BSD[keep_BS].float()
    codes_NM = sae.encode(inputs_ND)
    recon_ND = sae.reconstruct(inputs_ND, codes_NM)
    if recon_ND.shape[-1] != acts_ND.shape[-1]:
        check_width(point, acts_ND.shape[-1], recon_ND.shape[-1], "the SAE's output")
    acc.update(acts_ND, recon_ND, codes_NM)
    spliced_BSD, zeroed_BSD = acts_BSD.clone(), acts_BSD.clone()
    spliced_BSD[keep_BS] = recon_ND.to(acts_BSD.dtype)
    zeroed_BSD[keep_BS] = 0
    outputs = {}
    for name, replacement in (("sae", spliced_BSD), ("zero", zeroed_BSD)):
        with splice(model, point, partial(_replace_with, replacement)):
            outputs[name] = forward(tokens_BS)
    kind = _downstream_kind(cfg.downstream, clean_out)
    if kind == "ce_kl":
        _add_ce_kl(clean_out, outputs, tokens_BS, keep_BS, sums)
    elif kind == "embedding":
        _add_embedding(clean_out, outputs, sums)


def _replace_with(replacement_BSD: Tensor, original_BSD: Tensor) -> Tensor:
    if replacement_BSD.shape != original_BSD.shape:
        raise ConfigError(f"the hooked module produced shape {tuple(original_BSD.shape)} when "
                          f"spliced but {tuple(replacement_BSD.shape)} when read; it is called "
                          "with different inputs in one pass — hook another module")
    return replacement_BSD


def _downstream_kind(requested: Downstream, output: Any) -> Downstream:
    if requested == "auto":
        if output_logits(output) is not None:
            return "ce_kl"
        return "embedding" if output_hidden(output) is not None else "none"
    if requested == "ce_kl" and output_logits(output) is None:
        raise ConfigError("downstream=ce_kl needs a model that outputs next-token logits (a "
                          "causal LM); use downstream=embedding or none for this model")
    if requested == "embedding" and output_hidden(output) is None:
        raise ConfigError("downstream=embedding needs a model output with last_hidden_state")
    return requested


def _add_ce_kl(clean_out: Any, outputs: dict[str, Any], tokens_BS: Tensor, keep_BS: Tensor,
               sums: _Sums) -> None:
    counted_BS = keep_BS[:, :-1]  # predicting positions whose own activation was spliced
    clean_logits = output_logits(clean_out)
    assert clean_logits is not None
    sums.ce["clean"] += float(per_token_ce(clean_logits, tokens_BS)[counted_BS].sum())
    for name, out in outputs.items():
        logits = output_logits(out)
        assert logits is not None
        sums.ce[name] += float(per_token_ce(logits, tokens_BS)[counted_BS].sum())
        sums.kl[name] += float(per_token_kl(clean_logits, logits)[counted_BS].sum())
    sums.n += int(counted_BS.sum())


def _add_embedding(clean_out: Any, outputs: dict[str, Any], sums: _Sums) -> None:
    clean = output_hidden(clean_out)
    assert clean is not None
    for name, out in outputs.items():
        hidden = output_hidden(out)
        assert hidden is not None
        sums.cos[name] += float(_mean_pool_cosine(clean, hidden).sum())
    sums.n_contexts += clean.shape[0]


def run(sae: SAE, sae_path: str, model_name: str, hook: str, sources: list[str],
        text: TextConfig, cfg: ModelEvalConfig) -> ModelEvalResult:
    """Load a Hugging Face model (hub id or folder), read the text and evaluate ``sae``."""
    loaded = load_hf_model(model_name, device=cfg.device)
    max_contexts = math.ceil(cfg.max_tokens / text.context_size)
    batches = token_batches(sources, loaded.tokenizer, text, cfg.batch_contexts, max_contexts)
    exclude = special_ids(loaded.tokenizer) if text.exclude_special else []
    metrics, downstream, embedding = evaluate_on_model(
        loaded.model, sae, hook, batches, exclude, cfg, max_norm_multiple=text.max_norm_multiple,
        input_hook=getattr(sae.cfg, "input_hook", "") or None)
    settings = {"eval": asdict(cfg), "text": asdict(text), "sources": sources,
                "excluded_token_ids": exclude}
    return ModelEvalResult(sae_path, model_name, str(HookPoint.parse(hook)), settings, metrics,
                           downstream, embedding)
