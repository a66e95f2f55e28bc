"""Training a SARM: Bradley–Terry loss on (chosen, rejected) pairs plus λ·NMSE reconstruction of
the detached activations by the SAE.

    L = −log σ(r_chosen − r_rejected) + λ · NMSE(h.detach(), SAE(h.detach()))
    NMSE = mean over tokens of ‖x̂ − x‖² / ‖x‖²

Modes: ``head`` (only w trains), ``head_sae`` (w and the SAE), ``all`` (w, the SAE and the
backbone). The reconstruction term only reaches the SAE (h is detached), so in ``head`` mode it
is constant and skipped. With a frozen backbone (``head``, ``head_sae``) the hook activations
are computed once: the last-token activations of every pair, and a random sample of up to
``recon_rows`` token activations of the training sequences for the NMSE term (each step draws
``recon_batch`` of them). Mode ``all`` runs the backbone on every batch and takes the NMSE over
that batch's tokens.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.config import ConfigError, option
from saelab.sarm.model import SARM

Mode = Literal["head", "head_sae", "all"]


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Mean of −log σ(r_c − r_r) = softplus(r_r − r_c) (the stable form)."""
    return F.softplus(r_rejected - r_chosen).mean()


def nmse(x_ND: Tensor, recon_ND: Tensor) -> Tensor:
    """Mean over rows of ‖x̂ − x‖² / ‖x‖²."""
    return ((recon_ND - x_ND).pow(2).sum(-1) / x_ND.pow(2).sum(-1).clamp_min(1e-12)).mean()


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Share of pairs with r_chosen > r_rejected; a tie counts one half."""
    wins = (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()
    return float(wins.mean())


@dataclass
class PairTokens:
    """Tokenised pairs, right-padded: ids and attention masks ``(N, S)`` for both sides."""

    chosen_ids: Tensor
    chosen_mask: Tensor
    rejected_ids: Tensor
    rejected_mask: Tensor

    def __post_init__(self) -> None:
        n = self.chosen_ids.shape[0]
        if not (self.chosen_mask.shape[0] == self.rejected_ids.shape[0]
                == self.rejected_mask.shape[0] == n):
            raise ConfigError("chosen and rejected must hold the same number of pairs")
        if n == 0:
            raise ConfigError("no pairs: give at least one chosen/rejected pair")

    def __len__(self) -> int:
        return int(self.chosen_ids.shape[0])

    def subset(self, index: Tensor) -> PairTokens:
        return PairTokens(self.chosen_ids[index], self.chosen_mask[index],
                          self.rejected_ids[index], self.rejected_mask[index])


@dataclass
class SARMTrainConfig:
    """Options of SARM training."""

    mode: Mode = option("head", "what trains: head, head_sae, or all (backbone too)")
    epochs: int = option(3, "passes over the training pairs")
    batch_size: int = option(32, "pairs per optimiser step")
    lr: float = option(1e-3, "Adam learning rate of the head")
    lr_sae: float = option(1e-4, "learning rate of the SAE (modes head_sae, all)")
    lr_backbone: float = option(1e-5, "learning rate of the backbone (mode all)")
    recon_coefficient: float = option(1.0, "λ of the NMSE reconstruction term")
    recon_rows: int = option(100_000, "frozen backbone: token activations kept for the NMSE")
    recon_batch: int = option(1024, "frozen backbone: token activations per step for the NMSE")
    seed: int = option(0, "seed of the data order and the NMSE samples")
    log_every: int = option(50, "print progress every this many steps (0 = never)")

    def validate(self) -> None:
        if self.mode not in ("head", "head_sae", "all"):
            raise ConfigError(f"mode must be head, head_sae or all, not {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")


@dataclass
class TrainHistory:
    """Per-step losses and the time spent."""

    bt_loss: list[float] = field(default_factory=list)
    recon_nmse: list[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def pair_acts(sarm: SARM, pairs: PairTokens, batch_size: int = 256, keep_tokens: bool = True,
              progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Last-token activations of chosen and rejected ``(N, D)`` each, and (``keep_tokens``)
    every real token's activation ``(T, D)`` of both sides (for the reconstruction term)."""
    chosen: list[Tensor] = []
    rejected: list[Tensor] = []
    tokens: list[Tensor] = []
    tick = time.perf_counter()
    for start in range(0, len(pairs), batch_size):
        if progress and start and (start // batch_size) % 10 == 0:
            rate = start / (time.perf_counter() - tick)
            print(f"sarm: activations of {start}/{len(pairs)} pairs ({rate:.0f} pairs/s, ETA "
                  f"{(len(pairs) - start) / rate:.0f} s)", file=sys.stderr, flush=True)
        part = pairs.subset(torch.arange(start, min(len(pairs), start + batch_size)))
        for ids, mask, out in ((part.chosen_ids, part.chosen_mask, chosen),
                               (part.rejected_ids, part.rejected_mask, rejected)):
            acts = sarm.hook_acts(ids, mask)
            out.append(sarm.last_token(acts, mask))
            if keep_tokens:
                tokens.append(acts[mask.bool()])
    flat = torch.cat(tokens) if tokens else torch.zeros(0, sarm.d_in)
    return torch.cat(chosen), torch.cat(rejected), flat


def _optimiser(sarm: SARM, cfg: SARMTrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": list(sarm.head.parameters()), "lr": cfg.lr}]
    if cfg.mode in ("head_sae", "all") and sarm.sae is not None:
        groups.append({"params": list(sarm.sae.parameters()), "lr": cfg.lr_sae})
    if cfg.mode == "all":
        groups.append({"params": list(sarm.backbone.parameters()), "lr": cfg.lr_backbone})
    return torch.optim.Adam(groups)


def _set_trainable(sarm: SARM, cfg: SARMTrainConfig) -> None:
    sarm.head.requires_grad_(True)
    if sarm.sae is not None:
        sarm.sae.requires_grad_(cfg.mode in ("head_sae", "all"))
    sarm.backbone.requires_grad_(cfg.mode == "all")


def train_sarm(sarm: SARM, pairs: PairTokens, cfg: SARMTrainConfig,
               acts: tuple[Tensor, Tensor, Tensor] | None = None) -> TrainHistory:
    """Train ``sarm`` in place on ``pairs``; returns the loss history.

    ``acts``: the pairs' activations from :func:`pair_acts` when already computed (several
    heads on one frozen backbone); ignored in mode ``all``.
    """
    cfg.validate()
    if cfg.mode != "head" and sarm.sae is None:
        raise ConfigError(f"mode {cfg.mode} trains the SAE, but this SARM has none "
                          "(features='raw'); use mode head")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    history = TrainHistory()
    _set_trainable(sarm, cfg)
    frozen = cfg.mode != "all"
    sarm.backbone.eval()  # no dropout: rewards are deterministic functions of the text
    cached: tuple[Tensor, Tensor, Tensor] | None = None
    if frozen or sarm.cfg.features == "raw":
        cached = acts if acts is not None and frozen else pair_acts(
            sarm, pairs, progress=cfg.log_every > 0)
        if cached[2].shape[0] > cfg.recon_rows:
            keep = torch.randperm(cached[2].shape[0], generator=generator)[:cfg.recon_rows]
            cached = (cached[0], cached[1], cached[2][keep])
        if sarm.cfg.features == "raw":
            sarm.fit_standardiser(torch.cat([cached[0], cached[1]]))
    opt = _optimiser(sarm, cfg)
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    tick = time.perf_counter()
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(pairs), generator=generator)
        rows = order[(step % steps_per_epoch) * cfg.batch_size:][:cfg.batch_size]
        if frozen:
            assert cached is not None
            r_c = sarm.reward_from_acts(cached[0][rows])
            r_r = sarm.reward_from_acts(cached[1][rows])
            token_rows = cached[2][torch.randint(0, cached[2].shape[0], (cfg.recon_batch,),
                                                 generator=generator)]
        else:
            part = pairs.subset(rows)
            acts_c = sarm.hook_acts(part.chosen_ids, part.chosen_mask)
            acts_r = sarm.hook_acts(part.rejected_ids, part.rejected_mask)
            r_c = sarm.reward_from_acts(sarm.last_token(acts_c, part.chosen_mask))
            r_r = sarm.reward_from_acts(sarm.last_token(acts_r, part.rejected_mask))
            token_rows = torch.cat([acts_c[part.chosen_mask.bool()],
                                    acts_r[part.rejected_mask.bool()]])
        loss = bradley_terry_loss(r_c, r_r)
        history.bt_loss.append(float(loss.detach()))
        if cfg.mode != "head" and cfg.recon_coefficient > 0:
            assert sarm.sae is not None
            x = token_rows.detach()
            recon = nmse(x, sarm.sae(x))
            loss = loss + cfg.recon_coefficient * recon
            history.recon_nmse.append(float(recon.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            rate = (step + 1) / (time.perf_counter() - tick)
            recent = history.bt_loss[-cfg.log_every:]
            print(f"sarm {cfg.mode}: step {step + 1}/{total} BT loss "
                  f"{sum(recent) / len(recent):.4f} ({rate:.1f} steps/s, "
                  f"ETA {(total - step - 1) / rate:.0f} s)", file=sys.stderr, flush=True)
    sarm.requires_grad_(False)
    sarm.eval()
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def pair_rewards(sarm: SARM, pairs: PairTokens, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Rewards of chosen and rejected for every pair."""
    h_c, h_r, _ = pair_acts(sarm, pairs, batch_size, keep_tokens=False)
    return sarm.reward_from_acts(h_c), sarm.reward_from_acts(h_r)
