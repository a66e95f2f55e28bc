"""BatchTopK SAE (Bussmann, Leask, Nanda 2024): keep the B·k largest pre-activations of the
whole batch, so each row's L0 varies while the batch mean is k. At inference it is a JumpReLU
with one global threshold θ, learned during training and saved with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.architectures.base import BatchGroup, LossOutput, SAEConfig, StepContext, recon_loss
from saelab.architectures.topk import TopKConfig, TopKFamilySAE
from saelab.config import ConfigError, option
from saelab.ops import SparseCodes, batch_topk_encode, sparse_decode
from saelab.ops.kernels import keep_rank_share, ordered_topk
from saelab.registry import register


@dataclass
class BatchTopKConfig(TopKConfig):
    # BatchTopK keeps round(B·k) entries per batch, so a fractional mean L0 is meaningful.
    k: float = option(32, "mean active latents per row over a batch; may be fractional "  # type: ignore[assignment]
                      "(round(batch·k) entries are kept)")
    threshold_beta: float = option(0.999, "EMA factor of the inference threshold θ")
    threshold_start_step: int = option(
        1000, "step from which θ is tracked (early batches are unrepresentative)"
    )

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.threshold_beta < 1:
            raise ConfigError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}")


def batch_topk_codes(pre_BM: Tensor, k: float, group: BatchGroup | None = None) -> Tensor:
    """Dense codes keeping the round(B·k) largest rectified pre-activations of the whole batch
    (k may be fractional, as under auto-L0).

    The sparse path's selection exactly (``batch_topk_encode``): equal values go to the smaller
    row, then the smaller latent id, i.e. the smaller flat position (``kernels.ordered_topk``
    over the flattened batch). With a data-parallel ``group`` the batch is every rank's rows
    together: each rank proposes its largest (global B·k) entries and keeps its share of the
    whole batch's top B·k, the lower ranks' ties first (``kernels.keep_rank_share``).
    """
    world = group.world_size if group is not None else 1
    flat = pre_BM.flatten()
    n_keep = max(1, round(k * pre_BM.shape[0] * world))
    with torch.no_grad():  # selected on the pre-activations, as the sparse path does
        keys_1N, idx_1N = ordered_topk(flat.detach()[None], min(flat.numel(), n_keep))
        if group is not None and world > 1:
            everyone_1WC = _gather_candidate_keys(keys_1N, n_keep, group)
            idx_1N = idx_1N[keep_rank_share(keys_1N, idx_1N, everyone_1WC, n_keep, group.rank)]
    idx_N = idx_1N.flatten()
    vals_N = torch.relu(flat.gather(0, idx_N))
    return torch.zeros_like(flat).scatter(0, idx_N, vals_N).view_as(pre_BM)


def keep_batch_share(codes: SparseCodes, keys_N: Tensor, n_keep: int,
                     group: BatchGroup) -> Tensor:
    """Data parallel BatchTopK: which of this rank's candidate entries (its own top n_keep of
    its rows, ``batch_topk_encode``'s tie rule) are among the whole batch's top n_keep → (N,)
    bool, exactly as one process on the whole batch selects. Equal values go to the smaller
    row, then the smaller latent id; rank r holds the r-th block of rows, so the lower rank
    first (``kernels.keep_rank_share``). Exchanges the n_keep candidate keys per rank."""
    keys_1N = keys_N.detach().float()[None]
    everyone_1WC = _gather_candidate_keys(keys_1N, n_keep, group)
    order_1N = (codes.row_ids() * codes.n_latents + codes.indices)[None]
    return keep_rank_share(keys_1N, order_1N, everyone_1WC, n_keep, group.rank)[0]


def _gather_candidate_keys(keys_1N: Tensor, n_keep: int, group: BatchGroup) -> Tensor:
    """Every rank's candidate keys in rank order, each list padded to n_keep with −inf →
    (1, world, n_keep)."""
    padded = keys_1N.new_full((1, n_keep), float("-inf"))
    padded[:, : keys_1N.shape[1]] = keys_1N
    return group.gather(padded).view(1, group.world_size, n_keep)


@register("batchtopk")
class BatchTopKSAE(TopKFamilySAE):
    """Training: BatchTopK selection + AuxK. Inference: f = pre ⊙ 1[pre > θ] with the learned θ,
    where θ is an EMA of the smallest selected positive activation per batch.
    """

    config_class = BatchTopKConfig
    cfg: BatchTopKConfig
    supports_auto_l0 = True
    threshold: Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        # θ < 0 means "not learned yet"; encode() then falls back to the batch selection.
        self.register_buffer("threshold", torch.tensor(-1.0))

    def encode(self, acts_BD: Tensor) -> Tensor:
        pre = self.pre_acts(acts_BD)
        if float(self.threshold) < 0:
            return batch_topk_codes(pre, self.current_l0())
        return pre * (pre > self.threshold)

    def select(self, pre_BM: Tensor, ctx: StepContext) -> Tensor:
        """Dense reference selection (and threshold update)."""
        codes = batch_topk_codes(pre_BM, self.current_l0(ctx), ctx.batch_group)
        if self.training:
            self.update_threshold(codes[codes > 0], ctx.step, ctx.batch_group)
        return codes

    def select_sparse(self, acts_BD: Tensor, ctx: StepContext) -> tuple[SparseCodes, SparseCodes | None]:
        """Sparse-path selection (and threshold update) with the AuxK codes."""
        k, group = self.current_l0(ctx), ctx.batch_group
        # Data parallel: propose this rank's top (global B·k), keep those above the global cutoff.
        enc = batch_topk_encode(acts_BD, self.W_enc, self.b_enc, self.b_dec, k * group.world_size,
                                matmul_dtype=self.matmul_dtype, aux=self.aux_spec(ctx))
        codes = enc.codes
        if group.world_size > 1 and enc.keys is not None:
            n_keep = max(1, round(k * acts_BD.shape[0] * group.world_size))
            codes = codes.filter(keep_batch_share(codes, enc.keys, n_keep, group))
        if self.training:
            values = codes.values.detach()
            self.update_threshold(values[values > 0], ctx.step, group)
        return codes, enc.aux

    @torch.no_grad()
    def update_threshold(self, positive_values: Tensor, step: int,
                         group: BatchGroup | None = None) -> None:
        """θ ← EMA of the smallest selected positive activation of the (whole) batch."""
        if step < self.cfg.threshold_start_step:
            return
        batch_min = (positive_values.min() if positive_values.numel()
                     else positive_values.new_tensor(float("inf")))
        if group is not None:
            batch_min = group.min(batch_min)
        if not torch.isfinite(batch_min):
            return
        if float(self.threshold) < 0:
            self.threshold.copy_(batch_min)
        else:
            beta = self.cfg.threshold_beta
            self.threshold.mul_(beta).add_((1 - beta) * batch_min)

    def sparse_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        codes, aux = self.select_sparse(acts_BD, ctx)
        recon = sparse_decode(codes, self.W_dec, self.b_dec)
        mse = recon_loss(acts_BD, recon)
        return self.finish_sparse_loss(acts_BD, codes, aux, recon, mse, {"mse": mse}, ctx)

    def dense_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        pre = self.pre_acts(acts_BD)
        codes = self.select(pre, ctx)
        recon = self.decode(codes)
        mse = recon_loss(acts_BD, recon)
        return self.finish_loss(acts_BD, pre, codes, recon, mse, ctx, {"mse": mse})
