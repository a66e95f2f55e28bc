"""Standard SAE: ReLU encoder with an L1 penalty weighted by decoder norms (Bricken et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext, recon_loss
from saelab.config import ConfigError, option
from saelab.registry import register


@dataclass
class ReLUConfig(SAEConfig):
    l1_coefficient: float = option(5.0, "weight λ of the sparsity penalty λ·Σ_i f_i·‖d_i‖")

    def validate(self) -> None:
        super().validate()
        if self.l1_coefficient < 0:
            raise ConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")


@register("relu")
class ReLUSAE(SAE):
    """f = ReLU((x − b_dec)·W_enc + b_enc); loss = ‖x − x̂‖² + λ·Σ_i f_i‖d_i‖."""

    config_class: ClassVar[type[SAEConfig]] = ReLUConfig
    cfg: ReLUConfig

    def encode(self, acts_BD: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(acts_BD))

    def sparsity_penalty(self, codes_BM: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """(weighted penalty, unweighted penalty for logging)."""
        l1 = (codes_BM * self.decoder_norms()).sum(-1).mean()
        return self.cfg.l1_coefficient * ctx.sparsity_scale * l1, l1

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        codes = self.encode(acts_BD)
        recon = self.decode(codes)
        mse = recon_loss(acts_BD, recon)
        penalty, raw = self.sparsity_penalty(codes, ctx)
        active = codes > 0
        return LossOutput(
            total=mse + penalty,
            parts={"mse": mse, "sparsity": raw},
            fired_M=active.any(0),
            l0=active.sum(-1).float().mean(),
            recon_BD=recon.detach(),
        )
