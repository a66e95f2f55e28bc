"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a tied path sets
their magnitude. W_mag = exp(r_mag) ⊙ W_gate, so only r_mag and b_mag are extra parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext, recon_loss
from saelab.config import ConfigError, option
from saelab.registry import register


@dataclass
class GatedConfig(SAEConfig):
    adam_beta1: float | None = option(
        0.0, "Adam beta1 for this SAE: 0 as in the paper (None = the trainer's adam_beta1)")
    l1_coefficient: float = option(
        5.0, "weight λ of the L1 penalty on the rectified gate pre-activations"
    )

    def validate(self) -> None:
        super().validate()
        if self.l1_coefficient < 0:
            raise ConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")


@register("gated")
class GatedSAE(SAE):
    """π_gate = (x − b_dec)·W_enc + b_enc (W_enc is W_gate), f = 1[π_gate > 0] ⊙ ReLU(π_mag)
    with π_mag = exp(r_mag) ⊙ ((x − b_dec)·W_enc) + b_mag.

    Loss = ‖x − x̂(f)‖² + λ·Σ_i ReLU(π_gate)_i‖d_i‖ + ‖x − x̂_frozen(ReLU(π_gate))‖², where the
    last (auxiliary) term uses a stop-gradient decoder: it is the only route by which
    reconstruction gradients reach the gate.
    """

    config_class: ClassVar[type[SAEConfig]] = GatedConfig
    cfg: GatedConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(self.cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.cfg.d_sae))

    def _paths(self, acts_BD: Tensor) -> tuple[Tensor, Tensor]:
        proj = (acts_BD - self.b_dec) @ self.W_enc
        gate_pre = proj + self.b_enc
        mag_pre = proj * torch.exp(self.r_mag) + self.b_mag
        return gate_pre, mag_pre

    def encode(self, acts_BD: Tensor) -> Tensor:
        gate_pre, mag_pre = self._paths(acts_BD)
        return (gate_pre > 0).to(mag_pre.dtype) * torch.relu(mag_pre)

    def sparsity_penalty(self, gate_act_BM: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        l1 = (gate_act_BM * self.decoder_norms()).sum(-1).mean()
        return self.cfg.l1_coefficient * ctx.sparsity_scale * l1, l1

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        gate_pre, mag_pre = self._paths(acts_BD)
        codes = (gate_pre > 0).to(mag_pre.dtype) * torch.relu(mag_pre)
        active = codes != 0  # an open gate with a non-positive magnitude gives a zero code
        recon = self.decode(codes)
        mse = recon_loss(acts_BD, recon)
        gate_act = torch.relu(gate_pre)
        penalty, raw = self.sparsity_penalty(gate_act, ctx)
        frozen_recon = gate_act @ self.W_dec.detach() + self.b_dec.detach()
        aux = recon_loss(acts_BD, frozen_recon)
        return LossOutput(
            total=mse + penalty + aux,
            parts={"mse": mse, "sparsity": raw, "aux": aux},
            fired_M=active.any(0),
            l0=active.sum(-1).float().mean(),
            recon_BD=recon.detach(),
        )
