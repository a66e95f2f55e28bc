"""TopK SAE (Gao et al. 2024) with the AuxK loss that revives dead latents.

This module also holds what the TopK family (BatchTopK, Matryoshka, Ordered) shares: the AuxK
loss and the optional k schedule.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saelab.architectures.auto_l0 import AutoL0, AutoL0Options
from saelab.architectures.base import (
    SAE,
    LossOutput,
    SAEConfig,
    StepContext,
    default_k_aux,
    normalised_aux_loss,
    recon_loss,
)
from saelab.config import ConfigError, option
from saelab.ops import (
    SparseCodes,
    native_low_precision_matmul,
    sparse_autocast,
    sparse_decode,
    topk_encode,
)
from saelab.ops.kernels import ordered_topk
from saelab.registry import register

MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TopKConfig(AutoL0Options, SAEConfig):
    k: int = option(32, "active latents per row")
    k_aux: int = option(0, "latents in the AuxK reconstruction of the residual; 0 = d_in // 2")
    aux_coefficient: float = option(1 / 32, "weight α of the AuxK loss (0 turns it off)")
    k_start: int = option(0, "if > 0, k falls linearly from k_start to k during k_warmup")
    k_warmup: float = option(0.0, "fraction of training over which k falls from k_start to k")
    sparse_kernels: bool = option(
        True, "train through the sparse path (decoder and backward cost O(batch·k·d)); "
        "false = the dense reference path")
    matmul_dtype: Literal["float32", "bfloat16"] = option(
        "float32", "dtype of the encoder matrix multiply (sparse path); weights and optimiser "
        "state stay float32")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.k_start and not self.k <= self.k_start <= self.d_sae:
            raise ConfigError(f"k_start must be in [k, d_sae], got {self.k_start}")
        if self.aux_coefficient < 0:
            raise ConfigError("aux_coefficient must be >= 0")
        if self.k_aux < 0:
            raise ConfigError(f"k_aux must be >= 0 (0 = d_in // 2), got {self.k_aux}")
        if self.matmul_dtype != "float32" and not self.sparse_kernels:
            raise ConfigError("matmul_dtype other than float32 needs sparse_kernels = true")
        if self.auto_l0 and self.k_start:
            raise ConfigError("auto_l0 and k_start both schedule k; use one of them")
        self.validate_auto_l0(self.d_sae)

    def k_at(self, step: int, total_steps: int) -> int:
        """k for this step under the optional linear k warm-up."""
        if not self.k_start or self.k_warmup <= 0:
            return self.k
        frac = min(1.0, step / max(1.0, self.k_warmup * total_steps))
        return round(self.k_start + (self.k - self.k_start) * frac)


def topk_entries(pre_BM: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k largest pre-activations → (values_BK, latent ids_BK), values differentiable.

    The sparse path's tie rule (equal values: the smaller latent id, ``kernels.ordered_topk``),
    so the dense path selects the same entries; ``torch.topk`` picks among ties arbitrarily.
    Any leading dimensions (e.g. batch × sequence when steering a model) are kept.
    """
    with torch.no_grad():
        rows = pre_BM.detach().reshape(-1, pre_BM.shape[-1]).contiguous()
        idx = ordered_topk(rows, k)[1].reshape(*pre_BM.shape[:-1], -1)
    return pre_BM.gather(-1, idx), idx


def topk_codes(pre_BM: Tensor, k: int) -> Tensor:
    """Dense codes keeping each row's k largest pre-activations, rectified."""
    vals, idx = topk_entries(pre_BM, k)
    return torch.zeros_like(pre_BM).scatter(-1, idx, torch.relu(vals))


class TopKFamilySAE(SAE):
    """Shared parts of SAEs whose codes come from a top-k selection."""

    cfg: TopKConfig
    latents_major_encoder = True
    #: whether this architecture's selection follows a learned (fractional) L0 when auto_l0 is on
    supports_auto_l0: bool = False
    auto_l0: AutoL0 | None

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.auto_l0 = None
        if self.cfg.auto_l0:
            if not self.supports_auto_l0:
                raise ConfigError(f"auto_l0 is not available for {self.name!r}; use topk, "
                                  "batchtopk or matryoshka")
            self.auto_l0 = AutoL0(self.cfg, float(self.cfg.k), self.cfg.d_sae)
        #: under autocast, the dtype the sparse path's encoder product runs in (else None)
        self._autocast_matmul_dtype: torch.dtype | None = None
        if self.cfg.matmul_dtype != "float32" and not native_low_precision_matmul():
            warnings.warn(
                f"matmul_dtype={self.cfg.matmul_dtype}: this CPU has no native bf16 matrix "
                "multiply (no AVX512-BF16/AMX), so it will run several times slower than "
                "float32; use matmul_dtype='float32' here (bf16 pays on GPUs and recent CPUs)",
                stacklevel=2,
            )

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        if self.auto_l0 is not None and self.training:
            self.auto_l0.observe(ctx.step, ctx.total_steps, acts_BD, self.W_dec, self.b_dec)
        if self.cfg.sparse_kernels:
            with sparse_autocast(acts_BD.device) as dtype:
                self._autocast_matmul_dtype = dtype
                try:
                    out = self.sparse_loss(acts_BD, ctx)
                finally:
                    self._autocast_matmul_dtype = None
        else:
            out = self.dense_loss(acts_BD, ctx)
        if self.auto_l0 is not None:
            out.extras.update(self.auto_l0.log_extras())
        return out

    def current_l0(self, ctx: StepContext | None = None) -> float:
        """The target L0 now: the learned one under auto-L0, else k (with its warm-up)."""
        if self.auto_l0 is not None:
            return self.auto_l0.applied if self.training else self.auto_l0.value
        return float(self.cfg.k if ctx is None else self.cfg.k_at(ctx.step, ctx.total_steps))

    def current_k(self, ctx: StepContext | None = None) -> int:
        """Latents kept per row now (the target L0 rounded, at least 1)."""
        return max(1, round(self.current_l0(ctx)))

    @abstractmethod
    def sparse_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        """The training loss through the sparse kernels (saelab.ops)."""

    @abstractmethod
    def dense_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        """The same loss computed densely: the reference the sparse path is tested against."""

    def matmul_flops_per_token(self) -> float:
        if not self.cfg.sparse_kernels:
            return super().matmul_flops_per_token()
        d, m, k = self.cfg.d_in, self.cfg.d_sae, self.current_l0()
        # dense encoder product + sparse decode, its backward and the sparse encoder backward
        return 2.0 * d * m + 8.0 * k * d

    def aux_spec(self, ctx: StepContext) -> tuple[Tensor, int] | None:
        """(dead mask, k_aux) when the AuxK loss applies this step."""
        dead = ctx.dead_mask_M
        if dead is None or self.cfg.aux_coefficient == 0 or not bool(dead.any()):
            return None
        k_aux = self.cfg.k_aux or default_k_aux(self.cfg.d_in, self.cfg.d_sae)
        return dead, min(k_aux, int(dead.sum()))

    @property
    def matmul_dtype(self) -> torch.dtype:
        return self._autocast_matmul_dtype or MATMUL_DTYPES[self.cfg.matmul_dtype]

    def finish_sparse_loss(
        self, acts_BD: Tensor, codes: SparseCodes, aux_codes: SparseCodes | None,
        recon_BD: Tensor, main_loss: Tensor, parts: dict[str, Tensor],
        ctx: StepContext | None = None,
    ) -> LossOutput:
        """Add AuxK (from codes selected with the main ones) and package the output."""
        total = main_loss
        if aux_codes is not None:
            residual = (acts_BD - recon_BD).detach()
            aux = normalised_aux_loss(residual, sparse_decode(aux_codes, self.W_dec),
                                      ctx.batch_group if ctx is not None else None)
            total = total + self.cfg.aux_coefficient * aux
            parts["auxk"] = aux
        return LossOutput(
            total=total,
            parts=parts,
            fired_M=codes.fired_mask(),
            l0=codes.l0_per_row().float().mean(),
            recon_BD=recon_BD.detach(),
        )

    def aux_loss(self, pre_BM: Tensor, residual_BD: Tensor, ctx: StepContext) -> Tensor | None:
        """AuxK: reconstruct the (detached) residual from the top k_aux dead latents."""
        dead = ctx.dead_mask_M
        if dead is None or self.cfg.aux_coefficient == 0 or not bool(dead.any()):
            return None
        k_aux = min(self.cfg.k_aux or default_k_aux(self.cfg.d_in, self.cfg.d_sae), int(dead.sum()))
        masked = pre_BM.masked_fill(~dead, float("-inf"))
        aux_codes = topk_codes(masked, k_aux)
        return normalised_aux_loss(residual_BD, aux_codes @ self.W_dec, ctx.batch_group)

    def finish_loss(
        self, acts_BD: Tensor, pre_BM: Tensor, codes_BM: Tensor, recon_BD: Tensor,
        main_loss: Tensor, ctx: StepContext, parts: dict[str, Tensor],
    ) -> LossOutput:
        aux = self.aux_loss(pre_BM, (acts_BD - recon_BD).detach(), ctx)
        total = main_loss
        if aux is not None:
            total = total + self.cfg.aux_coefficient * aux
            parts["auxk"] = aux
        active = codes_BM != 0
        return LossOutput(
            total=total,
            parts=parts,
            fired_M=active.any(0),
            l0=active.sum(-1).float().mean(),
            recon_BD=recon_BD.detach(),
        )


@register("topk")
class TopKSAE(TopKFamilySAE):
    """f = ReLU(TopK_k((x − b_dec)·W_enc + b_enc)); loss = ‖x − x̂‖² + α·AuxK."""

    config_class = TopKConfig
    supports_auto_l0 = True

    def encode(self, acts_BD: Tensor) -> Tensor:
        return topk_codes(self.pre_acts(acts_BD), self.current_k())

    def encode_entries(self, acts_BD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``encode``'s positive entries straight from the per-row top-k (the same selection
        and values, no dense codes matrix)."""
        if type(self).encode is not TopKSAE.encode:  # a subclass that encodes otherwise
            return super().encode_entries(acts_BD)
        vals, idx = topk_entries(self.pre_acts(acts_BD), self.current_k())
        idx, perm = idx.sort(dim=-1)
        vals = vals.gather(-1, perm)
        fired = vals > 0  # encode's ReLU: a kept latent at or below zero does not fire
        rows = torch.arange(len(idx), device=idx.device).unsqueeze(1).expand_as(idx)[fired]
        return rows, idx[fired], vals[fired]

    def sparse_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        enc = topk_encode(acts_BD, self.W_enc, self.b_enc, self.b_dec, self.current_k(ctx),
                          matmul_dtype=self.matmul_dtype, aux=self.aux_spec(ctx))
        recon = sparse_decode(enc.codes, self.W_dec, self.b_dec)
        mse = recon_loss(acts_BD, recon)
        return self.finish_sparse_loss(acts_BD, enc.codes, enc.aux, recon, mse, {"mse": mse}, ctx)

    def dense_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        pre = self.pre_acts(acts_BD)
        codes = topk_codes(pre, self.current_k(ctx))
        recon = self.decode(codes)
        mse = recon_loss(acts_BD, recon)
        return self.finish_loss(acts_BD, pre, codes, recon, mse, ctx, {"mse": mse})


__all__ = ["SAE", "TopKConfig", "TopKFamilySAE", "TopKSAE", "topk_codes", "topk_entries"]
