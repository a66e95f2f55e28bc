"""Matryoshka SAE with fixed prefixes (Bussmann, Nabeshima, Karvonen, Nanda 2025): every prefix of
the latents must reconstruct the input on its own, which pushes general features to the front.
Codes come from BatchTopK over all latents.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saelab.architectures.base import LossOutput, StepContext, recon_loss
from saelab.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from saelab.config import ConfigError, option
from saelab.ops import grouped_decode
from saelab.registry import register


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    group_fractions: list[float] = option(
        [1 / 16, 1 / 8, 1 / 4, 9 / 16], "share of latents in each nested group, front to back"
    )

    def validate(self) -> None:
        super().validate()
        if not self.group_fractions or any(f <= 0 for f in self.group_fractions):
            raise ConfigError("group_fractions must be a non-empty list of positive numbers")
        if abs(sum(self.group_fractions) - 1) > 1e-6:
            raise ConfigError(f"group_fractions must sum to 1, got {sum(self.group_fractions)}")
        if len(self.group_fractions) > self.d_sae:
            raise ConfigError("more groups than latents")

    def prefix_ends(self) -> list[int]:
        """Cumulative group ends m_1 < … < m_n = d_sae."""
        ends, acc = [], 0.0
        for frac in self.group_fractions[:-1]:
            acc += frac
            ends.append(max(1, round(acc * self.d_sae)))
        ends.append(self.d_sae)
        out = sorted(set(ends))
        return out


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    """Loss = (1/n)·Σ_i ‖x − (f_{1:m_i}·W_dec[1:m_i] + b_dec)‖² + α·AuxK, computed with
    cumulative partial reconstructions (one pass over the groups)."""

    config_class = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def dense_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        pre = self.pre_acts(acts_BD)
        codes = self.select(pre, ctx)
        ends = self.cfg.prefix_ends()
        recon = self.b_dec.expand_as(acts_BD)
        total: Tensor | float = 0.0
        start = 0
        for end in ends:
            recon = recon + codes[:, start:end] @ self.W_dec[start:end]
            total = total + recon_loss(acts_BD, recon)
            start = end
        assert isinstance(total, Tensor)
        prefix_loss = total / len(ends)
        mse = recon_loss(acts_BD, recon)
        parts = {"mse": mse.detach(), "prefix_mse": prefix_loss}
        return self.finish_loss(acts_BD, pre, codes, recon, prefix_loss, ctx, parts)

    def sparse_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        codes, aux = self.select_sparse(acts_BD, ctx)
        ends = self.cfg.prefix_ends()
        partials_BGD = grouped_decode(codes, self.W_dec, ends)
        prefix_recon_BGD = partials_BGD.cumsum(1) + self.b_dec
        per_prefix = (acts_BD[:, None, :] - prefix_recon_BGD).pow(2).sum(-1).mean(0)
        prefix_loss = per_prefix.mean()
        recon = prefix_recon_BGD[:, -1]
        parts = {"mse": per_prefix[-1].detach(), "prefix_mse": prefix_loss}
        return self.finish_sparse_loss(acts_BD, codes, aux, recon, prefix_loss, parts, ctx)
