"""The LFADS network: spikes → bidirectional GRU encoder → g₀ posterior; optional controller
emitting inferred inputs u_t (AR(1) prior); generator GRU g_t = GRU(g_{t−1}, u_t); factors
f_t = W_f g_t; log-rates W_r f_t + b (per bin). Shapes: ``[trials, time, neurons]``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from saelab.lfads.config import LFADSModelConfig
from saelab.lfads.losses import ar1_kl, gaussian_kl

MIN_LOGVAR = math.log(1e-4)


@dataclass
class LFADSOutput:
    log_rates: torch.Tensor  # [B, T, n_neurons + n_heldout], log spikes per bin
    factors: torch.Tensor  # [B, T, fac_dim]
    inputs: torch.Tensor  # [B, T, co_dim] inferred inputs (empty without a controller)
    ic_kl: torch.Tensor  # [B]
    co_kl: torch.Tensor  # [B]


class LFADS(nn.Module):
    def __init__(self, cfg: LFADSModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        n_in, n_out = cfg.n_neurons, cfg.n_neurons + cfg.n_heldout
        self.dropout = nn.Dropout(0.0)  # rate set per step by the trainer (PBT searches it)
        self.ic_enc = nn.GRU(n_in, cfg.ic_enc_dim, batch_first=True, bidirectional=True)
        self.ic_linear = nn.Linear(2 * cfg.ic_enc_dim, 2 * cfg.gen_dim)
        self.ic_prior_mean = nn.Parameter(torch.zeros(cfg.gen_dim))
        self.register_buffer("ic_prior_logvar",
                             torch.full((cfg.gen_dim,), math.log(cfg.ic_prior_var)))
        if cfg.has_controller:
            self.ci_enc = nn.GRU(n_in, cfg.ci_enc_dim, batch_first=True, bidirectional=True)
            self.controller = nn.GRUCell(2 * cfg.ci_enc_dim + cfg.fac_dim, cfg.con_dim)
            self.co_linear = nn.Linear(cfg.con_dim, 2 * cfg.co_dim)
            self.co_prior_log_tau = nn.Parameter(
                torch.full((cfg.co_dim,), math.log(cfg.co_prior_tau)))
            self.co_prior_log_var = nn.Parameter(
                torch.full((cfg.co_dim,), math.log(cfg.co_prior_var)))
        self.generator = nn.GRUCell(max(cfg.co_dim, 1), cfg.gen_dim)
        self.factor_weight = nn.Parameter(torch.randn(cfg.fac_dim, cfg.gen_dim)
                                          / math.sqrt(cfg.gen_dim))
        self.readout = nn.Linear(cfg.fac_dim, n_out)

    def set_dropout(self, rate: float) -> None:
        self.dropout.p = rate

    def init_readout_bias(self, mean_counts_per_bin: torch.Tensor) -> None:
        """Start the log-rates at each neuron's mean rate (faster, stabler early training)."""
        with torch.no_grad():
            self.readout.bias.copy_(torch.log(mean_counts_per_bin.clamp_min(1e-3)))

    def factors_of(self, g: torch.Tensor) -> torch.Tensor:
        # Unit-norm rows keep the factors' scale tied to the generator's (as in LFADS), so the
        # L2 and KL penalties cannot be dodged by rescaling.
        w = self.factor_weight / self.factor_weight.norm(dim=1, keepdim=True)
        return self.dropout(g) @ w.T

    def recurrent_weights(self) -> list[torch.Tensor]:
        names = ["generator.weight_hh", "ic_enc.weight_hh_l0", "ic_enc.weight_hh_l0_reverse"]
        if self.cfg.has_controller:
            names += ["controller.weight_hh", "ci_enc.weight_hh_l0",
                      "ci_enc.weight_hh_l0_reverse"]
        return [self.get_parameter(name) for name in names]

    def l2_penalty(self) -> torch.Tensor:
        """½ Σ‖W_hh‖² / Σ numel over the recurrent weight matrices (size-independent scale)."""
        weights = self.recurrent_weights()
        total = torch.stack([w.pow(2).sum() for w in weights]).sum()
        return 0.5 * total / sum(w.numel() for w in weights)

    def forward(self, x: torch.Tensor, sample: bool = True) -> LFADSOutput:
        """``x``: input counts [B, T, n_neurons] (already masked by CD / sample validation).
        ``sample``: draw g₀ and u_t from their posteriors (training), else use their means."""
        cfg = self.cfg
        batch, steps, _ = x.shape
        x = self.dropout(x)
        _, h_n = self.ic_enc(x)
        ic_mean, ic_logvar = self.ic_linear(
            self.dropout(torch.cat([h_n[0], h_n[1]], -1))).chunk(2, -1)
        ic_logvar = ic_logvar.clamp_min(MIN_LOGVAR)
        ic_kl = gaussian_kl(ic_mean, ic_logvar, self.ic_prior_mean,
                            self.get_buffer("ic_prior_logvar"))
        g = ic_mean + torch.exp(0.5 * ic_logvar) * torch.randn_like(ic_mean) if sample else ic_mean
        g = self.dropout(g)
        f = self.factors_of(g)
        if cfg.has_controller:
            ci, _ = self.ci_enc(x)
            ci = self.dropout(ci)
            c = x.new_zeros(batch, cfg.con_dim)
        gen_in = x.new_zeros(batch, 1)
        factors, inputs, u_means, u_logvars = [], [], [], []
        for t in range(steps):
            if cfg.has_controller:
                c = self.controller(torch.cat([ci[:, t], f], -1), c)
                if cfg.cell_clip > 0:
                    c = c.clamp(-cfg.cell_clip, cfg.cell_clip)
                u_mean, u_logvar = self.co_linear(self.dropout(c)).chunk(2, -1)
                u_logvar = u_logvar.clamp_min(MIN_LOGVAR)
                gen_in = (u_mean + torch.exp(0.5 * u_logvar) * torch.randn_like(u_mean)
                          if sample else u_mean)
                u_means.append(u_mean)
                u_logvars.append(u_logvar)
                inputs.append(gen_in)
            g = self.generator(gen_in, g)
            if cfg.cell_clip > 0:
                g = g.clamp(-cfg.cell_clip, cfg.cell_clip)
            f = self.factors_of(g)
            factors.append(f)
        factors_t = torch.stack(factors, 1)
        if cfg.has_controller:
            inputs_t = torch.stack(inputs, 1)
            co_kl = ar1_kl(inputs_t, torch.stack(u_means, 1), torch.stack(u_logvars, 1),
                           self.co_prior_log_tau, self.co_prior_log_var)
        else:
            inputs_t = x.new_zeros(batch, steps, 0)
            co_kl = x.new_zeros(batch)
        return LFADSOutput(self.readout(factors_t), factors_t, inputs_t, ic_kl, co_kl)
