"""Latent-sharded TopK training: each rank holds a slice of one SAE's latents.

``torchrun ... saelab train --shard-latents`` (``TrainConfig.shard_latents``) trains this way;
the :class:`~saelab.training.Trainer` drives it. For SAEs too wide for one device (the OpenAI
TopK paper trains 16M latents this way). Every
rank sees the whole batch and holds latents ``[lo, hi)``: W_enc columns, b_enc, W_dec rows and
their Adam state; b_dec is replicated. One step:

1. each rank runs the fused encoder + per-row top-k on its slice (``saelab.ops.topk_encode``,
   AuxK candidates among its dead latents from the same chunks);
2. every rank's B·k candidate keys (the pre-activations the selection compared) are
   all-gathered; each row's k-th largest is the cutoff. A rank keeps its candidates above it
   and, of those equal to it, as many as the lower ranks' ties leave (:func:`keep_global_topk`):
   the selection equals the unsharded one entry for entry, ties included;
3. partial reconstructions from local decoder rows are all-reduced (summed): x̂ is complete
   on every rank, and so is the loss;
4. backward: the sum passes its gradient to every rank unchanged, and b_dec's encoder-side
   gradient is summed across ranks. Decoder-row renormalisation and Adam act on local rows.

Per step each rank sends B·k·4 bytes of candidates (plus B·k_aux·4 with AuxK) and all-reduces
B·d·4 bytes of reconstruction (twice with AuxK) — independent of the number of latents.

Checkpoints: the slices (weights, Adam moments, dead-latent counters) are gathered and rank 0
writes the ordinary single-process checkpoint, so a run resumes on any number of ranks, sharded
or not; resuming slices the full state again. Only plain ``topk`` SAEs on the sparse path shard
(:func:`check_shardable`): their selection is per row, which the candidate exchange makes exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelab.architectures.base import (
    SAE,
    LossOutput,
    SAEConfig,
    StepContext,
    default_k_aux,
    normalised_aux_loss,
    recon_loss,
)
from saelab.architectures.topk import MATMUL_DTYPES, TopKConfig, TopKSAE
from saelab.config import ConfigError
from saelab.ops import SparseCodes, sparse_autocast, sparse_decode, topk_encode
from saelab.ops.kernels import keep_rank_share
from saelab.registry import build
from saelab.training.checkpoint import SlotState


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


def keep_global_topk(codes: SparseCodes, keys_N: Tensor, k: int, rank: int,
                     world_size: int) -> SparseCodes:
    """Of this rank's per-row candidates, keep exactly its entries of each row's top k over
    all ranks, under ``kernels.ordered_topk``'s rule (a larger value first; among equal values
    the smaller latent id): the selection equals the unsharded one, entry for entry.

    ``codes`` are this rank's fixed-k candidates (its own top-min(k, width) per row under the
    same rule) and ``keys_N`` the values the selection compared (``Encoded.keys``). Every rank
    all-gathers the keys (B·k·4 bytes each); ranks hold ascending latent-id ranges, so "the
    smaller id first" is "the lower rank first, then the smaller local id", which each rank
    applies from the gathered keys alone (``kernels.keep_rank_share``).
    """
    B, K = codes.indices_BK.shape  # K <= k: a shard narrower than k proposes all its latents
    keys_BK = keys_N.detach().reshape(B, K).float()  # exact widening from bf16 / fp16
    padded = keys_BK.new_full((B, k), float("-inf"))
    padded[:, :K] = keys_BK
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    keep_BK = keep_rank_share(keys_BK, codes.indices_BK, torch.stack(parts, dim=1), k, rank)
    return codes.filter(keep_BK.reshape(-1))


#: the dimension along which each parameter is split over the ranks (None = replicated)
SHARD_DIMS: dict[str, int | None] = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "b_dec": None}


def check_shardable(name: str, cfg: SAEConfig, world_size: int) -> None:
    """Raise ConfigError unless SAE ``name`` can be trained latent-sharded on ``world_size``
    ranks with a selection equal to the unsharded one."""
    if type(cfg) is not TopKConfig:
        raise ConfigError(f"--shard-latents: SAE {name!r} is not a plain 'topk' SAE "
                          f"({type(cfg).__name__}); only 'topk' SAEs "
                          "shard their latents (their per-row selection is exact across "
                          "shards). Train it data parallel (drop --shard-latents) instead")
    if not cfg.sparse_kernels or cfg.auto_l0:
        raise ConfigError(f"--shard-latents: SAE {name!r} needs sparse_kernels = true and "
                          "auto_l0 = false")
    if cfg.d_sae % world_size:
        raise ConfigError(f"--shard-latents: SAE {name!r} has d_sae {cfg.d_sae}, which does not "
                          f"split evenly over {world_size} ranks; use a multiple of {world_size}")


class ShardedTopK(nn.Module):
    """Latents ``[lo, hi)`` of a TopK SAE (``rank`` of ``world_size`` equal slices).

    ``cfg`` stays the whole SAE's config (``d_sae`` = all latents)."""

    unit_norm_decoder = True
    name = "topk"

    def __init__(self, cfg: TopKConfig, rank: int, world_size: int) -> None:
        super().__init__()
        check_shardable("topk", cfg, world_size)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        width = cfg.d_sae // world_size
        self.lo, self.hi = rank * width, (rank + 1) * width
        d = cfg.d_in
        self.W_enc = nn.Parameter(torch.zeros(d, width))
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.W_dec = nn.Parameter(torch.zeros(width, d))
        self.b_dec = nn.Parameter(torch.zeros(d))

    @classmethod
    def from_full(cls, sae: SAE, rank: int, world_size: int) -> ShardedTopK:
        """This rank's slice of an unsharded SAE, on the SAE's device."""
        if not isinstance(sae.cfg, TopKConfig):
            raise ConfigError(f"cannot shard a {type(sae.cfg).__name__} SAE; only 'topk'")
        out = cls(sae.cfg, rank, world_size)
        out.load_slice(sae)
        return out.to(sae.W_enc.device)

    @torch.no_grad()
    def load_slice(self, full: nn.Module) -> None:
        """Copy this rank's slice of ``full``'s parameters into this module."""
        for name, p in self.named_parameters():
            p.copy_(self.slice_of(name, getattr(full, name)))

    def slice_of(self, name: str, t: Tensor) -> Tensor:
        """This rank's part of ``t``, a whole-SAE tensor shaped like parameter ``name``."""
        dim = SHARD_DIMS[name]
        return t if dim is None or t.dim() == 0 else t.narrow(dim, self.lo, self.hi - self.lo)

    def gather(self, name: str, t: Tensor) -> Tensor:
        """The whole-SAE tensor (on the CPU) from every rank's part ``t`` of parameter ``name``
        (a collective: every rank calls it)."""
        dim = SHARD_DIMS[name]
        if dim is None or t.dim() == 0:
            return t.detach().cpu()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts, dim=dim).cpu()

    @torch.no_grad()
    def gather_full(self) -> TopKSAE:
        """The whole SAE, assembled on every rank's CPU (for saving or evaluation)."""
        full = build(self.cfg)
        assert isinstance(full, TopKSAE)
        for name, p in self.named_parameters():
            getattr(full, name).copy_(self.gather(name, p))
        return full

    def matmul_flops_per_token(self) -> float:
        """This rank's share: its slice of the encoder product plus the sparse decode."""
        d, m, k = self.cfg.d_in, self.hi - self.lo, self.cfg.k
        return 2.0 * d * m + 8.0 * k * d

    def _aux_spec(self, ctx: StepContext) -> tuple[Tensor, int] | None:
        dead = ctx.dead_mask_M
        if dead is None or self.cfg.aux_coefficient == 0:
            return None
        n_dead = dead.sum().reshape(1)
        dist.all_reduce(n_dead)  # AuxK runs on every rank or on none
        if int(n_dead) == 0:
            return None
        k_aux = self.cfg.k_aux or default_k_aux(self.cfg.d_in, self.cfg.d_sae)
        return dead, min(k_aux, int(n_dead))

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        with sparse_autocast(acts_BD.device) as dtype:
            return self._loss(acts_BD, ctx, dtype or MATMUL_DTYPES[self.cfg.matmul_dtype])

    def _loss(self, acts_BD: Tensor, ctx: StepContext, matmul_dtype: torch.dtype) -> LossOutput:
        k = self.cfg.k_at(ctx.step, ctx.total_steps)
        aux = self._aux_spec(ctx)
        enc = topk_encode(acts_BD, self.W_enc, self.b_enc, _SharedInput.apply(self.b_dec),
                          min(k, self.hi - self.lo), aux=aux,
                          matmul_dtype=matmul_dtype)
        assert enc.keys is not None
        codes = keep_global_topk(enc.codes, enc.keys, k, self.rank, self.world_size)
        recon = _SumOverShards.apply(sparse_decode(codes, self.W_dec)) + self.b_dec
        mse = recon_loss(acts_BD, recon)
        parts, total = {"mse": mse}, mse
        if aux is not None and enc.aux is not None and enc.aux_keys is not None:
            aux_codes = keep_global_topk(enc.aux, enc.aux_keys, aux[1], self.rank,
                                         self.world_size)
            aux_recon = _SumOverShards.apply(sparse_decode(aux_codes, self.W_dec))
            parts["auxk"] = normalised_aux_loss((acts_BD - recon).detach(), aux_recon)
            total = total + self.cfg.aux_coefficient * parts["auxk"]
        l0 = codes.l0_per_row().float().mean().reshape(1)
        dist.all_reduce(l0)
        return LossOutput(total=total, parts=parts, fired_M=codes.fired_mask(), l0=l0[0],
                          recon_BD=recon.detach())


def _state_by_name(module: nn.Module, opt: torch.optim.Optimizer
                   ) -> tuple[dict[str, dict[str, Tensor]], list[Any]]:
    """The optimizer's per-parameter state keyed by parameter name, and its param groups."""
    sd = opt.state_dict()
    names = [n for n, _ in module.named_parameters()]
    return {names[i]: st for i, st in sd["state"].items()}, sd["param_groups"]


def _state_by_index(module: nn.Module, state: dict[str, dict[str, Any]]) -> dict[int, Any]:
    names = [n for n, _ in module.named_parameters()]
    return {names.index(name): st for name, st in state.items()}


def gather_slot(sae: ShardedTopK, slot: SlotState, full: nn.Module,
                optimizer: torch.optim.Optimizer) -> SlotState:
    """The whole SAE's training state from every rank's slice (a collective): ``optimizer``
    (built over ``full``'s parameters) receives the gathered Adam moments."""
    local, groups = _state_by_name(sae, slot.optimizer)
    state = {name: {key: sae.gather(name, v) if isinstance(v, Tensor) else v
                    for key, v in st.items()} for name, st in local.items()}
    optimizer.load_state_dict({"state": _state_by_index(full, state), "param_groups": groups})
    counters = [torch.empty_like(slot.tokens_since_fired_M) for _ in range(sae.world_size)]
    dist.all_gather(counters, slot.tokens_since_fired_M.contiguous())
    return SlotState(optimizer, torch.cat(counters).cpu())


@torch.no_grad()
def load_slot_slice(sae: ShardedTopK, slot: SlotState, full: nn.Module,
                    full_slot: SlotState) -> None:
    """Load this rank's slice of a whole SAE's weights and training state (e.g. a checkpoint's)."""
    sae.load_slice(full)
    state, groups = _state_by_name(full, full_slot.optimizer)
    sliced = {name: {key: sae.slice_of(name, v).clone() if isinstance(v, Tensor) else v
                     for key, v in st.items()} for name, st in state.items()}
    slot.optimizer.load_state_dict({"state": _state_by_index(sae, sliced), "param_groups": groups})
    slot.tokens_since_fired_M.copy_(full_slot.tokens_since_fired_M[sae.lo : sae.hi])
