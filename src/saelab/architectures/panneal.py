"""p-annealing (Karvonen et al. 2024): an Lp^p sparsity penalty whose p falls from 1 to p_end in
discrete steps, rescaling the coefficient at each step so the penalty's size stays continuous.
Works on the standard ReLU SAE (``panneal``) and on the Gated SAE (``gated_panneal``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE, SAEConfig, StepContext
from saelab.architectures.gated import GatedConfig, GatedSAE
from saelab.architectures.relu import ReLUConfig, ReLUSAE
from saelab.config import ConfigError, option
from saelab.registry import register


@dataclass
class PAnnealOptions:
    p_start: float = option(1.0, "p of the Lp^p penalty before annealing starts")
    p_end: float = option(0.2, "p reached by the last annealing step")
    anneal_start: float = option(0.25, "fraction of training after which p starts to fall")
    n_updates: int = option(10, "number of discrete changes of p")
    queue_length: int = option(10, "batches averaged when rescaling the coefficient at a change")

    def validate_anneal(self) -> None:
        if not 0 < self.p_end <= self.p_start:
            raise ConfigError(f"need 0 < p_end <= p_start, got p_end={self.p_end}, p_start={self.p_start}")
        if not 0 <= self.anneal_start < 1:
            raise ConfigError(f"anneal_start is a fraction in [0, 1), got {self.anneal_start}")
        if self.n_updates < 1 or self.queue_length < 1:
            raise ConfigError("n_updates and queue_length must be >= 1")


def lp_penalty(acts_BM: Tensor, weights_M: Tensor, p: float) -> Tensor:
    """mean_batch Σ_i (a_i·w_i)^p, with a gradient that stays finite where a_i = 0."""
    scaled = acts_BM * weights_M
    positive = scaled > 0
    safe = torch.where(positive, scaled, torch.ones_like(scaled))
    return torch.where(positive, safe.pow(p), torch.zeros_like(scaled)).sum(-1).mean()


class PAnnealer(nn.Module):
    """Schedule state for p-annealing, kept in buffers so a resumed run continues exactly.

    The p changes happen at ``n_updates`` steps evenly spaced over
    [anneal_start·T, T), taking p through linspace(p_start, p_end, n_updates + 1)[1:], so p_end is
    reached and trained with. At each change λ ← λ·mean(L_p_cur)/mean(L_p_next) over the last
    ``queue_length`` batches, where L_p = mean_batch Σ f^p.
    """

    p: Tensor
    coefficient: Tensor
    n_done: Tensor
    queue: Tensor
    queue_count: Tensor

    def __init__(self, opts: PAnnealOptions, coefficient: float) -> None:
        super().__init__()
        self.opts = opts
        self.register_buffer("p", torch.tensor(opts.p_start, dtype=torch.float64))
        self.register_buffer("coefficient", torch.tensor(coefficient, dtype=torch.float64))
        self.register_buffer("n_done", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("queue", torch.zeros(opts.queue_length, 2, dtype=torch.float64))
        self.register_buffer("queue_count", torch.tensor(0, dtype=torch.int64))

    def schedule(self, total_steps: int) -> tuple[list[int], list[float]]:
        o = self.opts
        start = int(o.anneal_start * total_steps)
        steps = torch.linspace(start, total_steps, o.n_updates + 1)[:-1].round().long().tolist()
        ps = torch.linspace(o.p_start, o.p_end, o.n_updates + 1, dtype=torch.float64)[1:].tolist()
        return steps, ps

    def penalty(self, acts_BM: Tensor, weights_M: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """(weighted penalty to add to the loss, raw Lp^p for logging); advances the schedule."""
        steps, ps = self.schedule(ctx.total_steps)
        n = int(self.n_done)
        if n < len(steps) and ctx.step >= steps[n]:
            self._advance(ps[n])
            n += 1
        p = float(self.p)
        raw = lp_penalty(acts_BM, weights_M, p)
        if n < len(ps):  # remember this batch's penalty under the next p for the rescaling
            with torch.no_grad():
                nxt = lp_penalty(acts_BM.detach(), weights_M.detach(), ps[n])
                slot = int(self.queue_count) % self.opts.queue_length
                self.queue[slot, 0] = raw.detach().double()
                self.queue[slot, 1] = nxt.double()
                self.queue_count += 1
        return float(self.coefficient) * ctx.sparsity_scale * raw, raw

    @torch.no_grad()
    def _advance(self, p_next: float) -> None:
        filled = min(int(self.queue_count), self.opts.queue_length)
        if filled > 0:
            cur, nxt = self.queue[:filled].mean(0)
            if nxt > 0:
                self.coefficient *= cur / nxt
        self.p.fill_(p_next)
        self.n_done += 1
        self.queue.zero_()
        self.queue_count.zero_()


@dataclass
class PAnnealConfig(ReLUConfig, PAnnealOptions):
    def validate(self) -> None:
        super().validate()
        self.validate_anneal()


@dataclass
class GatedPAnnealConfig(GatedConfig, PAnnealOptions):
    def validate(self) -> None:
        super().validate()
        self.validate_anneal()


@register("panneal")
class PAnnealSAE(ReLUSAE):
    """Standard ReLU SAE with the annealed Lp^p penalty in place of L1."""

    config_class = PAnnealConfig
    cfg: PAnnealConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.annealer = PAnnealer(self.cfg, self.cfg.l1_coefficient)

    def sparsity_penalty(self, codes_BM: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        return self.annealer.penalty(codes_BM, self.decoder_norms(), ctx)


@register("gated_panneal")
class GatedPAnnealSAE(GatedSAE):
    """Gated SAE with the annealed Lp^p penalty on the rectified gate pre-activations."""

    config_class = GatedPAnnealConfig
    cfg: GatedPAnnealConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.annealer = PAnnealer(self.cfg, self.cfg.l1_coefficient)

    def sparsity_penalty(self, gate_act_BM: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        return self.annealer.penalty(gate_act_BM, self.decoder_norms(), ctx)


__all__ = ["SAE", "GatedPAnnealSAE", "PAnnealSAE", "PAnnealer", "lp_penalty"]
