"""TopK crosscoder (Lindsey et al. 2024, "Sparse crosscoders"): one dictionary read from and
written to several layers.

Each latent has an encoder and a decoder block per layer; its pre-activation sums the layers'
encoder contributions and its decoder writes to every layer. With the layers' activations side
by side in one row, ``[x_1 | … | x_L]``, that is exactly an SAE on the concatenated row, so a
crosscoder trains on the same sparse TopK path. Training rows come from caches of several hooks
of one model pass (``saelab train --data L1_CACHE --pair L2_CACHE ...``). What it adds is the
layer structure: per-layer decoder norms (which layers a latent writes to) and per-layer
explained variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.architectures.base import LossOutput, StepContext
from saelab.architectures.topk import TopKConfig, TopKSAE
from saelab.config import ConfigError, option
from saelab.metrics.core import explained_variance
from saelab.registry import register


@dataclass
class CrosscoderConfig(TopKConfig):
    n_layers: int = option(0, "layers read and written, side by side in a row (0 = the number "
                          "of paired sources in the data)")
    layer_hooks: list[str] = option([], "hook of each layer, in row order (metadata)")

    def validate(self) -> None:
        super().validate()
        if self.n_layers < 1:
            raise ConfigError("n_layers is unknown: set it, or train on paired caches "
                              "(--data L1 --data-pair L2 ...)")
        if self.d_in % self.n_layers:
            raise ConfigError(f"d_in={self.d_in} must split into n_layers={self.n_layers} equal "
                              "layer blocks; pair caches of hooks with the same width")
        if self.layer_hooks and len(self.layer_hooks) != self.n_layers:
            raise ConfigError(f"layer_hooks names {len(self.layer_hooks)} hooks for "
                              f"n_layers={self.n_layers}")


@register("crosscoder")
class CrosscoderSAE(TopKSAE):
    """f = ReLU(TopK_k(Σ_l (x_l − b_dec,l)·W_enc,l + b_enc)); x̂_l = f·W_dec,l + b_dec,l.

    Unit-norm decoder rows over all layers together; loss = Σ_l ‖x_l − x̂_l‖² + α·AuxK.
    """

    config_class = CrosscoderConfig
    cfg: CrosscoderConfig

    @property
    def layer_width(self) -> int:
        return self.cfg.d_in // self.cfg.n_layers

    def layers(self, rows_BD: Tensor) -> list[Tensor]:
        """The per-layer blocks of rows (or of decoder rows)."""
        return list(rows_BD.split(self.layer_width, dim=-1))

    def layer_decoder_norms(self) -> Tensor:
        """d_sae × n_layers: how strongly each latent writes to each layer."""
        return self.W_dec.view(self.cfg.d_sae, self.cfg.n_layers, self.layer_width).norm(dim=-1)

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        out = super().training_loss(acts_BD, ctx)
        if out.recon_BD is not None:
            for i, (x, xhat) in enumerate(zip(self.layers(acts_BD), self.layers(out.recon_BD),
                                              strict=True)):
                out.extras[f"explained_variance_layer{i}"] = explained_variance(x, xhat)
        return out


@torch.no_grad()
def layer_explained_variance(sae: CrosscoderSAE, rows_BD: Tensor) -> list[float]:
    """Explained variance of each layer block of ``rows_BD``."""
    recon = sae(rows_BD)
    return [explained_variance(x, xhat) for x, xhat in zip(sae.layers(rows_BD), sae.layers(recon),
                                                           strict=True)]
