"""TopK transcoder and skip transcoder (Dunefsky et al. 2024; Paulo et al. 2025).

A transcoder reads activations at one hook (e.g. an MLP's input) and predicts those at another
(the MLP's output) through sparse latents: ŷ = TopK(x·W_enc + b_enc)·W_dec + b_dec, plus
x·W_skipᵀ for a skip transcoder. Training rows hold the input and the target side by side,
``[x | y]`` — what ``saelab train --data IN_CACHE --pair OUT_CACHE`` streams from two caches of
one model pass — so the trainer, the sparse path and the evaluations are the same as for SAEs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelab.architectures.base import (
    LossOutput,
    SAEConfig,
    StepContext,
    encoder_weight,
    recon_loss,
)
from saelab.architectures.topk import TopKConfig, TopKSAE, topk_codes
from saelab.config import ConfigError, option
from saelab.metrics.core import explained_variance
from saelab.ops import sparse_decode, topk_encode
from saelab.registry import register


@dataclass
class TranscoderConfig(TopKConfig):
    d_out: int = option(0, "target width; 0 = taken from the data (input and target of equal "
                        "width when neither d_in nor d_out is set)")
    skip: bool = option(False, "add a learned linear skip connection x·W_skipᵀ (skip transcoder)")
    input_hook: str = option("", "hook the inputs came from (metadata; hook_name is the target's)")

    def resolved(self, d_in: int | None = None) -> TranscoderConfig:
        """``d_in`` here is the data-row width, d_in + d_out."""
        total = d_in
        din, dout = self.d_in, self.d_out
        if total is not None:
            if din and dout and din + dout != total:
                raise ConfigError(f"the transcoder expects rows of width d_in + d_out = "
                                  f"{din + dout} but the data has width {total}")
            if din and not dout:
                dout = total - din
            elif dout and not din:
                din = total - dout
            elif not din and not dout:
                if total % 2:
                    raise ConfigError(f"data width {total} is odd, so input and target differ in "
                                      "width: set d_in or d_out")
                din = dout = total // 2
        if din <= 0 or dout <= 0:
            raise ConfigError("transcoder widths are unknown: set d_in and d_out, or train on "
                              "paired data [input | target]")
        out = dataclasses.replace(self, d_in=din, d_out=dout, d_sae=self.d_sae or din * self.expansion)
        out.validate()
        return out


@register("transcoder")
class TranscoderSAE(TopKSAE):
    """ŷ = ReLU(TopK_k(x·W_enc + b_enc))·W_dec + b_dec [+ x·W_skipᵀ]; loss = ‖y − ŷ‖² + α·AuxK.

    ``W_dec`` is d_sae × d_out and ``b_dec`` d_out; no bias is subtracted from the input (its
    width differs from b_dec's), as in SAELens's transcoders. Unit-norm decoder rows.
    """

    config_class = TranscoderConfig
    cfg: TranscoderConfig

    def __init__(self, cfg: SAEConfig) -> None:
        assert isinstance(cfg, TranscoderConfig)
        if cfg.d_in <= 0 or cfg.d_out <= 0 or cfg.d_sae <= 0:
            cfg = cfg.resolved()
        if cfg.auto_l0:
            raise ConfigError("auto_l0 is not available for transcoders (the L0 proxies read a "
                              "decoder in the input's space); set k")
        nn.Module.__init__(self)  # not SAE.__init__: its decoder would have the input's width
        self.cfg = cfg
        self.auto_l0 = None
        d, o, m = cfg.d_in, cfg.d_out, cfg.d_sae
        self.W_enc = nn.Parameter(encoder_weight(d, m, self.latents_major_encoder))
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.W_dec = nn.Parameter(torch.empty(m, o))
        self.b_dec = nn.Parameter(torch.zeros(o))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(o, d))
        self.register_buffer("no_input_bias", torch.zeros(d), persistent=False)
        self.no_input_bias: Tensor
        self.reset_parameters(torch.Generator().manual_seed(0))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random unit decoder rows in the target space, random unit encoder columns in the
        input space, zero biases and skip."""
        m = self.cfg.d_sae
        w_dec = torch.randn(m, self.cfg.d_out, generator=generator)
        self.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        w_enc = torch.randn(self.cfg.d_in, m, generator=generator)
        self.W_enc.copy_(w_enc / w_enc.norm(dim=0, keepdim=True))
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.cfg.skip:
            self.W_skip.zero_()

    # ------------------------------------------------------------------ paired data

    @property
    def data_width(self) -> int:
        return self.cfg.d_in + self.cfg.d_out

    def split_data(self, rows_BW: Tensor) -> tuple[Tensor, Tensor]:
        if rows_BW.shape[-1] != self.data_width:
            raise ConfigError(f"transcoder rows must have width d_in + d_out = {self.data_width} "
                              f"([input | target]), got {rows_BW.shape[-1]}")
        return rows_BW[..., :self.cfg.d_in], rows_BW[..., self.cfg.d_in:]

    def skip_term(self, inputs_BD: Tensor) -> Tensor | None:
        return inputs_BD @ self.W_skip.T if self.cfg.skip else None

    def reconstruct(self, inputs_BD: Tensor, codes_BM: Tensor) -> Tensor:
        out = self.decode(codes_BM)
        skip = self.skip_term(inputs_BD)
        return out if skip is None else out + skip

    # ------------------------------------------------------------------ inference

    def pre_acts(self, acts_BD: Tensor) -> Tensor:
        return acts_BD @ self.W_enc + self.b_enc

    def encode(self, acts_BD: Tensor) -> Tensor:
        return topk_codes(self.pre_acts(acts_BD), self.cfg.k)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Trained on (s·x, s·y): codes of raw x need W_enc·s; ŷ_raw = ŷ/s. The skip term
        s·x·W_skipᵀ/s is already scale-free."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # ------------------------------------------------------------------ training

    def matmul_flops_per_token(self) -> float:
        skip = 6.0 * self.cfg.d_in * self.cfg.d_out if self.cfg.skip else 0.0
        return super().matmul_flops_per_token() + skip

    def sparse_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        x, y = self.split_data(acts_BD)
        enc = topk_encode(x, self.W_enc, self.b_enc, self.no_input_bias,
                          self.cfg.k_at(ctx.step, ctx.total_steps),
                          matmul_dtype=self.matmul_dtype, aux=self.aux_spec(ctx))
        recon = sparse_decode(enc.codes, self.W_dec, self.b_dec)
        skip = self.skip_term(x)
        if skip is not None:
            recon = recon + skip
        mse = recon_loss(y, recon)
        return _target_metrics(
            self.finish_sparse_loss(y, enc.codes, enc.aux, recon, mse, {"mse": mse}), y)

    def dense_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        x, y = self.split_data(acts_BD)
        pre = self.pre_acts(x)
        codes = topk_codes(pre, self.cfg.k_at(ctx.step, ctx.total_steps))
        recon = self.reconstruct(x, codes)
        mse = recon_loss(y, recon)
        return _target_metrics(self.finish_loss(y, pre, codes, recon, mse, ctx, {"mse": mse}), y)


def _target_metrics(out: LossOutput, target_BD: Tensor) -> LossOutput:
    """Log EV against the target (the trainer's own EV compares with the whole data row)."""
    assert out.recon_BD is not None
    out.extras["explained_variance"] = explained_variance(target_BD, out.recon_BD)
    out.recon_BD = None
    return out
