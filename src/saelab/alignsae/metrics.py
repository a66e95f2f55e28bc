"""AlignSAE's read-out metrics (definitions also in docs/metrics.md, "AlignSAE").

- slot accuracy = mean over questions of [argmax_r z_rel(x) = asked relation]
- value-head accuracy = mean of [argmax head_r(z_rel[r]) = answer's first token], r the asked
  relation
- reconstruction: explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² and MSE mean (x − x̂)²;
  "free-only" decodes with the relation slots set to 0 (what the free latents carry)
- best-matching latents of a plain SAE: for each relation r, the latent whose activation has the
  highest Pearson correlation with the indicator [asked relation = r] on the training questions;
  its "on value" is its mean activation on questions asking r
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.architectures.alignsae import AlignSAE
from saelab.architectures.base import SAE
from saelab.metrics.core import explained_variance


@torch.no_grad()
def slot_accuracy(sae: AlignSAE, acts_ND: Tensor, relation_N: Tensor) -> float:
    rel = sae.relation_slots(sae.encode(acts_ND))
    return float((rel.argmax(-1) == relation_N).float().mean())


@torch.no_grad()
def value_accuracy(sae: AlignSAE, acts_ND: Tensor, relation_N: Tensor, token_N: Tensor) -> float:
    logits = sae.value_logits(sae.encode(acts_ND), relation_N)
    return float((logits.argmax(-1) == token_N).float().mean())


@torch.no_grad()
def reconstruction(sae: SAE, acts_ND: Tensor) -> dict[str, float]:
    recon = sae.decode(sae.encode(acts_ND))
    return {"explained_variance": explained_variance(acts_ND, recon),
            "mse": float((recon - acts_ND).pow(2).mean())}


@torch.no_grad()
def free_only_reconstruction(sae: AlignSAE, acts_ND: Tensor) -> dict[str, float]:
    """Reconstruction with the relation slots zeroed: what the free latents alone carry."""
    codes = sae.encode(acts_ND)
    codes[..., sae.cfg.n_free:] = 0
    recon = sae.decode(codes)
    return {"explained_variance": explained_variance(acts_ND, recon),
            "mse": float((recon - acts_ND).pow(2).mean())}


@torch.no_grad()
def l0(sae: SAE, acts_ND: Tensor) -> float:
    """Mean number of non-zero latents per row."""
    return float((sae.encode(acts_ND) != 0).sum(-1).float().mean())


@dataclass
class MatchedLatents:
    """A plain SAE's best-matching latent per relation and its mean activation when on."""

    latents: list[int]
    on_values: list[float]
    correlations: list[float]


@torch.no_grad()
def best_matching_latents(sae: SAE, acts_ND: Tensor, relation_N: Tensor,
                          n_relations: int) -> MatchedLatents:
    codes = sae.encode(acts_ND).double()
    centred = codes - codes.mean(0)
    code_sd = centred.pow(2).mean(0).sqrt()
    latents, on_values, corrs = [], [], []
    for r in range(n_relations):
        indicator = (relation_N == r).double()
        ind = indicator - indicator.mean()
        corr = (centred * ind[:, None]).mean(0) / (code_sd * ind.pow(2).mean().sqrt()).clamp_min(
            1e-12)
        j = int(corr.argmax())
        latents.append(j)
        corrs.append(float(corr[j]))
        on_values.append(float(codes[relation_N == r, j].mean()))
    return MatchedLatents(latents, on_values, corrs)


@torch.no_grad()
def matched_slot_accuracy(sae: SAE, matched: MatchedLatents, acts_ND: Tensor,
                          relation_N: Tensor) -> float:
    """The baseline's slot accuracy: argmax over its matched latents, each divided by its on
    value, equals the asked relation."""
    codes = sae.encode(acts_ND)[:, matched.latents]
    scaled = codes / torch.tensor(matched.on_values).abs().clamp_min(1e-12)
    return float((scaled.argmax(-1) == relation_N).float().mean())
