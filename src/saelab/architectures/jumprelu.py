"""JumpReLU SAE (Rajamanoharan et al. 2024b): f = π ⊙ H(π − θ) with a learned threshold per
latent and a direct L0 penalty, trained through straight-through estimators (STEs) with a
rectangle kernel of width ε.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext, recon_loss
from saelab.config import ConfigError, option
from saelab.registry import register


@dataclass
class JumpReLUConfig(SAEConfig):
    adam_beta1: float | None = option(
        0.0, "Adam beta1 for this SAE: 0 as in the paper (None = the trainer's adam_beta1)")
    l0_coefficient: float = option(0.05, "weight λ of the L0 penalty λ·Σ_i H(π_i − θ_i)")
    bandwidth: float = option(0.05, "STE kernel width ε (on inputs normalised to E‖x‖² = d_in)")
    threshold_init: float = option(0.1, "initial threshold θ of every latent")

    def validate(self) -> None:
        super().validate()
        if self.l0_coefficient < 0 or self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ConfigError("need l0_coefficient >= 0, bandwidth > 0 and threshold_init > 0")


THRESHOLD_FLOOR = 1e-6


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """y = π·H(π − θ); ∂y/∂π = H(π − θ); ∂y/∂θ := −(θ/ε)·K((π − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = grad * (pre > theta)
        grad_theta = (-(theta / eps) * _rectangle((pre - theta) / eps) * grad).sum(0)
        return grad_pre, grad_theta, None


class _StepFn(torch.autograd.Function):
    """y = H(π − θ); no gradient to π; ∂y/∂θ := −(1/ε)·K((π − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (-(1.0 / eps) * _rectangle((pre - theta) / eps) * grad).sum(0)
        return None, grad_theta, None


@register("jumprelu")
class JumpReLUSAE(SAE):
    """Loss = ‖x − x̂‖² + λ·Σ_i H(π_i − θ_i).

    θ is a plain parameter (clamped positive), not log θ: under Adam a log-parametrised
    threshold moves by about lr in log-space per step, so from a small initial value it barely
    moves in a normal run — the "threshold never moves" failure reported for peers.
    """

    config_class = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((self.cfg.d_sae,), self.cfg.threshold_init))

    def theta(self) -> Tensor:
        """θ clamped to ≥ 1e-6 in the forward pass with the gradient passed straight through,
        so a threshold pushed below the clamp still gets the STE gradients and can recover
        (a plain clamp_min would send it zero gradient for ever)."""
        clamped = self.threshold.clamp_min(THRESHOLD_FLOOR)
        return self.threshold + (clamped - self.threshold).detach()

    def encode(self, acts_BD: Tensor) -> Tensor:
        pre = self.pre_acts(acts_BD)
        return pre * (pre > self.theta())

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        pre = self.pre_acts(acts_BD)
        theta = self.theta()
        eps = self.cfg.bandwidth
        codes = _JumpReLUFn.apply(pre, theta, eps)
        recon = self.decode(codes)
        mse = recon_loss(acts_BD, recon)
        l0_soft = _StepFn.apply(pre, theta, eps).sum(-1).mean()
        penalty = self.cfg.l0_coefficient * ctx.sparsity_scale * l0_soft
        active = pre > theta
        return LossOutput(
            total=mse + penalty,
            parts={"mse": mse, "l0_penalty": l0_soft},
            fired_M=active.any(0),
            l0=active.sum(-1).float().mean(),
            recon_BD=recon.detach(),
        )
