"""Ordered SAE (OSAE; Wang, Quach, Parsan, Yang 2025): every latent index is its own prefix.

L = Σ_ℓ p(ℓ)·‖x − b_dec − Σ_{j<ℓ} f_j d_j‖², computed exactly over every ℓ. Per row the partial
reconstruction only changes at the k active indices j_1 < … < j_k, so the sum collapses to
Σ_s P(j_s < ℓ ≤ j_{s+1})·‖r_s‖² with r_s the residual after the first s active latents
(sort, cumulative sum, CDF lookup), not sampled as in Matryoshka or nested dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.architectures.base import LossOutput, SAEConfig, StepContext, recon_loss
from saelab.architectures.topk import TopKConfig, TopKFamilySAE, topk_codes, topk_entries
from saelab.config import ConfigError, option
from saelab.ops import sparse_decode, topk_encode
from saelab.registry import register


@dataclass
class OrderedConfig(TopKConfig):
    prefix_power: float = option(
        0.0, "p(ℓ) ∝ ℓ^-prefix_power over prefix lengths ℓ = 1..d_sae (0 = uniform, saelab's "
        "default)"
    )
    prefix_groups: list[float] = option(
        [], "piecewise p(ℓ) as in the OSAE paper's LLM runs: group fractions of d_sae summing to "
        "1 (e.g. [0.0625, 0.125, 0.25, 0.5625]); each group gets equal probability mass, spread "
        "over its prefix lengths by prefix_power; [] = one group"
    )

    def validate(self) -> None:
        super().validate()
        if self.prefix_power < 0:
            raise ConfigError("prefix_power must be >= 0")
        if self.prefix_groups:
            if any(f <= 0 for f in self.prefix_groups) or abs(sum(self.prefix_groups) - 1) > 1e-6:
                raise ConfigError(f"prefix_groups must be positive fractions that sum to 1, got "
                                  f"{self.prefix_groups}")
            if len(group_ends(self.d_sae, self.prefix_groups)) != len(self.prefix_groups):
                raise ConfigError(f"prefix_groups {self.prefix_groups} give empty groups at "
                                  f"d_sae={self.d_sae}")


def group_ends(d_sae: int, fractions: list[float]) -> list[int]:
    """Last prefix length of each group (distinct, increasing, the last is d_sae)."""
    ends: list[int] = []
    total = 0.0
    for f in fractions:
        total += f
        end = min(d_sae, round(total * d_sae))
        if not ends or end > ends[-1]:
            ends.append(end)
    ends[-1] = d_sae
    return ends


def prefix_cdf(d_sae: int, power: float, device: torch.device | None = None,
               groups: list[float] | None = None) -> Tensor:
    """cdf[j] = P(ℓ ≤ j) for j = 0..d_sae, float64 (float32 loses up to ~40% of a prefix's
    weight at 65k latents). p(ℓ) ∝ ℓ^-power on ℓ = 1..d_sae, or, with ``groups``, each group of
    prefix lengths gets mass 1/n_groups spread ∝ ℓ^-power within it (piecewise)."""
    ell = torch.arange(1, d_sae + 1, dtype=torch.float64, device=device)
    p = ell.pow(-power)
    if groups:
        start = 0
        ends = group_ends(d_sae, groups)
        for end in ends:
            p[start:end] = p[start:end] / p[start:end].sum() / len(ends)
            start = end
    p = p / p.sum()
    return torch.cat([torch.zeros(1, dtype=torch.float64, device=device), p.cumsum(0)])


def ordered_prefix_loss(
    acts_BD: Tensor, idx_BK: Tensor, vals_BK: Tensor, W_dec_MD: Tensor, b_dec_D: Tensor,
    cdf: Tensor,
) -> Tensor:
    """Exact expected prefix loss; rows are processed in chunks to bound memory (B×K×D)."""
    B, K = idx_BK.shape
    D = acts_BD.shape[1]
    M = W_dec_MD.shape[0]
    order = idx_BK.argsort(dim=1)
    idx_sorted = idx_BK.gather(1, order)
    vals_sorted = vals_BK.gather(1, order)
    # Weight of "first s active latents included": P(j_s < ℓ ≤ j_{s+1}) with j_0 = 0 and
    # j_{k+1} = M, in terms of 0-based indices (latent j is kept by prefix ℓ iff j < ℓ).
    bounds = torch.cat([
        torch.zeros(B, 1, dtype=torch.long, device=idx_BK.device),
        idx_sorted + 1,
        torch.full((B, 1), M + 1, dtype=torch.long, device=idx_BK.device),
    ], dim=1)
    cdf_at = cdf[(bounds - 1).clamp(0, M)]
    cdf_at[:, 0] = 0.0
    # differences of the float64 CDF, then cast: tiny prefix weights keep their precision
    weights_BS = (cdf_at[:, 1:] - cdf_at[:, :-1]).to(acts_BD.dtype)  # (B, K+1)
    chunk = max(1, (1 << 22) // max(1, K * D))
    total = acts_BD.new_zeros(())
    for start in range(0, B, chunk):
        sl = slice(start, start + chunk)
        contrib = vals_sorted[sl, :, None] * W_dec_MD[idx_sorted[sl]]  # (b, K, D)
        residual0 = (acts_BD[sl] - b_dec_D)[:, None, :]
        partial = torch.cat([torch.zeros_like(residual0), contrib.cumsum(1)], dim=1)
        sq = (residual0 - partial).pow(2).sum(-1)  # (b, K+1)
        total = total + (weights_BS[sl] * sq).sum()
    return total / B


@register("ordered")
class OrderedSAE(TopKFamilySAE):
    """TopK codes trained with the exact nested (ordered) loss over every prefix, + AuxK."""

    config_class = OrderedConfig
    cfg: OrderedConfig
    cdf: Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("cdf", prefix_cdf(self.cfg.d_sae, self.cfg.prefix_power,
                                               groups=self.cfg.prefix_groups),
                             persistent=False)

    def encode(self, acts_BD: Tensor) -> Tensor:
        return topk_codes(self.pre_acts(acts_BD), self.cfg.k)

    def sparse_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        enc = topk_encode(acts_BD, self.W_enc, self.b_enc, self.b_dec,
                          self.cfg.k_at(ctx.step, ctx.total_steps),
                          matmul_dtype=self.matmul_dtype, aux=self.aux_spec(ctx))
        codes = enc.codes
        recon = sparse_decode(codes, self.W_dec, self.b_dec)
        nested = ordered_prefix_loss(acts_BD, codes.indices_BK, codes.values_BK, self.W_dec,
                                     self.b_dec, self.cdf)
        parts = {"mse": recon_loss(acts_BD, recon).detach(), "ordered_mse": nested}
        return self.finish_sparse_loss(acts_BD, codes, enc.aux, recon, nested, parts, ctx)

    def dense_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        k = self.cfg.k_at(ctx.step, ctx.total_steps)
        pre = self.pre_acts(acts_BD)
        vals, idx = topk_entries(pre, k)
        vals = torch.relu(vals)
        codes = torch.zeros_like(pre).scatter(-1, idx, vals)
        recon = self.decode(codes)
        nested = ordered_prefix_loss(acts_BD, idx, vals, self.W_dec, self.b_dec, self.cdf)
        parts = {"mse": recon_loss(acts_BD, recon).detach(), "ordered_mse": nested}
        return self.finish_loss(acts_BD, pre, codes, recon, nested, ctx, parts)
