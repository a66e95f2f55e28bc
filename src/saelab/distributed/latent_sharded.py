"""Latent-sharded TopK training: each rank holds a slice of one SAE's latents.

For SAEs too wide for one device (the OpenAI TopK paper trains 16M latents this way). Every
rank sees the whole batch and holds latents ``[lo, hi)``: W_enc columns, b_enc, W_dec rows and
their Adam state; b_dec is replicated. One step:

1. each rank runs the fused encoder + per-row top-k on its slice (``saelab.ops.topk_encode``,
   AuxK candidates among its dead latents from the same chunks);
2. every rank's B·k candidate values are all-gathered; each row's k-th largest is the cutoff,
   and a rank keeps its candidates at or above it: the selection equals the unsharded one;
3. partial reconstructions from local decoder rows are all-reduced (summed): x̂ is complete
   on every rank, and so is the loss;
4. backward: the sum passes its gradient to every rank unchanged, and b_dec's encoder-side
   gradient is summed across ranks. Decoder-row renormalisation and Adam act on local rows.

Per step each rank sends B·k·4 bytes of candidates (plus B·k_aux·4 with AuxK) and all-reduces
B·d·4 bytes of reconstruction (twice with AuxK) — independent of the number of latents.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelab.architectures.base import LossOutput, StepContext, normalised_aux_loss, recon_loss
from saelab.architectures.topk import TopKConfig, TopKSAE
from saelab.config import ConfigError
from saelab.ops import SparseCodes, sparse_decode, topk_encode
from saelab.training.trainer import make_adam, normalise_decoder, remove_parallel_gradient


class _SumOverShards(torch.autograd.Function):
    """Forward: sum of every rank's tensor. Backward: each rank's gradient passes unchanged
    (every rank computes the same loss from the same sum)."""

    @staticmethod
    def forward(ctx: Any, partial: Tensor) -> Tensor:
        total = partial.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class _SharedInput(torch.autograd.Function):
    """Forward: identity on a replicated tensor. Backward: gradients from every rank's shard
    are summed, so the replicated parameter gets its full gradient everywhere."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


def keep_global_topk(codes: SparseCodes, k: int, world_size: int) -> SparseCodes:
    """Of this rank's fixed-k candidates per row, keep those among the row's top k over all
    ranks (exact up to exact ties)."""
    vals_BK = codes.values_BK.detach()
    B, K = vals_BK.shape  # K <= k: a shard narrower than k proposes all its latents
    padded = vals_BK.new_full((B, k), float("-inf"))
    padded[:, :K] = vals_BK
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    everyone_BC = torch.cat(parts, dim=1)
    cutoff_B = everyone_BC.topk(k, dim=1).values[:, -1]
    return codes.filter((vals_BK >= cutoff_B[:, None]).reshape(-1))


class ShardedTopK(nn.Module):
    """Latents ``[lo, hi)`` of a TopK SAE (``rank`` of ``world_size`` equal slices)."""

    unit_norm_decoder = True

    def __init__(self, cfg: TopKConfig, rank: int, world_size: int) -> None:
        super().__init__()
        if cfg.d_sae % world_size:
            raise ConfigError(f"d_sae {cfg.d_sae} does not split evenly over {world_size} "
                              "ranks; use a multiple of the number of ranks")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        width = cfg.d_sae // world_size
        self.lo, self.hi = rank * width, (rank + 1) * width
        d = cfg.d_in
        self.W_enc = nn.Parameter(torch.zeros(d, width))
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.W_dec = nn.Parameter(torch.zeros(width, d))
        self.b_dec = nn.Parameter(torch.zeros(d))

    @classmethod
    def from_full(cls, sae: TopKSAE, rank: int, world_size: int) -> ShardedTopK:
        """This rank's slice of an unsharded SAE (e.g. one initialised identically everywhere)."""
        out = cls(sae.cfg, rank, world_size)
        with torch.no_grad():
            out.W_enc.copy_(sae.W_enc[:, out.lo : out.hi])
            out.b_enc.copy_(sae.b_enc[out.lo : out.hi])
            out.W_dec.copy_(sae.W_dec[out.lo : out.hi])
            out.b_dec.copy_(sae.b_dec)
        return out.to(sae.W_enc.device)

    @torch.no_grad()
    def gather_full(self) -> TopKSAE:
        """The whole SAE, assembled on every rank (for saving or evaluation)."""
        full = TopKSAE(self.cfg)

        def gather(t: Tensor, dim: int) -> Tensor:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.detach().contiguous())
            return torch.cat(parts, dim=dim).cpu()

        full.W_enc.copy_(gather(self.W_enc, 1))
        full.b_enc.copy_(gather(self.b_enc, 0))
        full.W_dec.copy_(gather(self.W_dec, 0))
        full.b_dec.copy_(self.b_dec.detach().cpu())
        return full

    def _aux_spec(self, ctx: StepContext) -> tuple[Tensor, int] | None:
        dead = ctx.dead_mask_M
        if dead is None or self.cfg.aux_coefficient == 0:
            return None
        n_dead = dead.sum().reshape(1)
        dist.all_reduce(n_dead)  # AuxK runs on every rank or on none
        if int(n_dead) == 0:
            return None
        k_aux = self.cfg.k_aux or max(1, min(self.cfg.d_sae, self.cfg.d_in // 2))
        return dead, min(k_aux, int(n_dead))

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        k = self.cfg.k_at(ctx.step, ctx.total_steps)
        aux = self._aux_spec(ctx)
        enc = topk_encode(acts_BD, self.W_enc, self.b_enc, _SharedInput.apply(self.b_dec),
                          min(k, self.hi - self.lo), aux=aux)
        codes = keep_global_topk(enc.codes, k, self.world_size)
        recon = _SumOverShards.apply(sparse_decode(codes, self.W_dec)) + self.b_dec
        mse = recon_loss(acts_BD, recon)
        parts, total = {"mse": mse}, mse
        if aux is not None and enc.aux is not None:
            aux_codes = keep_global_topk(enc.aux, aux[1], self.world_size)
            aux_recon = _SumOverShards.apply(sparse_decode(aux_codes, self.W_dec))
            parts["auxk"] = normalised_aux_loss((acts_BD - recon).detach(), aux_recon)
            total = total + self.cfg.aux_coefficient * parts["auxk"]
        l0 = codes.l0_per_row().float().mean().reshape(1)
        dist.all_reduce(l0)
        return LossOutput(total=total, parts=parts, fired_M=codes.fired_mask(), l0=l0[0],
                          recon_BD=recon.detach())


class LatentShardedTrainer:
    """The trainer's step for one latent-sharded TopK SAE on this rank: Adam, the decoder
    constraint and dead-latent counters on the local slice (run under torchrun, one per rank).
    """

    def __init__(self, sae: ShardedTopK, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, dead_after_tokens: int = 1_000_000) -> None:
        self.sae, self.step, self.dead_after_tokens = sae, 0, dead_after_tokens
        self.optimizer = make_adam(sae.parameters(), lr=lr, betas=betas, eps=eps)
        self.tokens_since_fired_M = torch.zeros(sae.hi - sae.lo, dtype=torch.int64,
                                                device=sae.W_enc.device)

    def train_step(self, acts_BD: Tensor, total_steps: int) -> LossOutput:
        """One optimiser step on a batch that every rank holds whole."""
        sae = self.sae
        dead = self.tokens_since_fired_M >= self.dead_after_tokens
        self.optimizer.zero_grad(set_to_none=True)
        out = sae.training_loss(acts_BD, StepContext(self.step, total_steps, dead_mask_M=dead))
        out.total.backward()
        remove_parallel_gradient(sae.W_dec)
        self.optimizer.step()
        normalise_decoder(sae.W_dec)
        self.tokens_since_fired_M += acts_BD.shape[0]
        self.tokens_since_fired_M[out.fired_M] = 0
        self.step += 1
        return out
