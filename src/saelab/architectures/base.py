"""The interface every SAE architecture implements.

An architecture is one file in this folder: a config dataclass (subclass of :class:`SAEConfig`)
and a module (subclass of :class:`SAE`) decorated with :func:`register`. The trainer, the
checkpoint format, the evaluators and the CLI only talk to this interface.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from saelab.config import ConfigError, option


@dataclass
class SAEConfig:
    """Options shared by every architecture."""

    d_in: int = option(0, "input width (activation dimension); taken from the data if 0")
    d_sae: int = option(0, "number of latents; 0 means d_in * expansion")
    expansion: int = option(8, "latents per input dimension, used when d_sae is 0")
    lr: float | None = option(None, "learning rate for this SAE (overrides the trainer's)")
    adam_beta1: float | None = option(None, "Adam beta1 for this SAE (overrides the trainer's)")
    model_name: str = option("", "model the activations came from (metadata)")
    hook_name: str = option("", "hook the activations came from (metadata)")

    def resolved(self, d_in: int | None = None) -> SAEConfig:
        """A copy with d_in and d_sae filled in and checked."""
        d = self.d_in or (d_in or 0)
        if d <= 0:
            raise ConfigError("d_in is unknown: set d_in or train on data so it can be read")
        if d_in is not None and self.d_in and self.d_in != d_in:
            raise ConfigError(
                f"the SAE expects inputs of width d_in={self.d_in} but the data has width {d_in}; "
                "set d_in to the data's width or use the matching data file"
            )
        m = self.d_sae or d * self.expansion
        out = dataclasses.replace(self, d_in=d, d_sae=m)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise ConfigError for inconsistent options (subclasses extend)."""
        if self.d_sae <= 0:
            raise ConfigError(f"d_sae must be positive, got {self.d_sae}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr} (leave it unset to use the "
                              "trainer's lr)")
        if self.adam_beta1 is not None and not 0 <= self.adam_beta1 < 1:
            raise ConfigError(f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")


class BatchGroup:
    """The processes that together hold one training batch, each a shard of its rows.

    This default is a single process: every reduction is the identity. Under data parallelism
    ``saelab.distributed`` passes a torch.distributed group, so that statistics over the whole
    batch (BatchTopK's selection and threshold, the AuxK normaliser) match one process on the
    full batch. All ranks must make the same calls in the same order.
    """

    world_size: int = 1
    rank: int = 0  # this process's place; rank r holds the r-th block of the batch's rows

    def mean(self, t: Tensor) -> Tensor:
        """Mean of ``t`` over the ranks (no gradient)."""
        return t

    def min(self, t: Tensor) -> Tensor:
        """Element-wise minimum of ``t`` over the ranks (no gradient)."""
        return t

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` (equal shapes) concatenated along dim 0, in rank order."""
        return t


@dataclass
class StepContext:
    """What the trainer tells an SAE about the current step."""

    step: int
    total_steps: int
    sparsity_scale: float = 1.0  # sparsity-coefficient warm-up factor in [0, 1]
    dead_mask_M: Tensor | None = None  # latents that have not fired for `dead_after_tokens`
    batch_group: BatchGroup = field(default_factory=BatchGroup)  # ranks sharing this batch


@dataclass
class LossOutput:
    """A training loss: the total to backpropagate plus named parts for logging."""

    total: Tensor
    parts: dict[str, Tensor]
    fired_M: Tensor  # bool: which latents fired at least once in this batch
    l0: Tensor  # mean number of active latents per row
    recon_BD: Tensor | None = None  # detached reconstruction (for logging metrics)
    extras: dict[str, float] = field(default_factory=dict)


def encoder_weight(d_in: int, d_sae: int, latents_major: bool) -> Tensor:
    """An uninitialised (d_in, d_sae) encoder matrix.

    ``latents_major`` stores it column-major, so that ``W_enc.t()`` is a contiguous
    (d_sae, d_in) matrix: the layout in which the sparse backward produces W_enc's gradient
    (one row per latent, summed from the few inputs that selected it) and the fused Adam step
    then reads it, with no transposing copy of a d_in × d_sae matrix each step. The shape, the
    values, checkpoints and exports are the same either way; the encoder GEMM reads either
    layout at the same speed.
    """
    return torch.empty(d_sae, d_in).t() if latents_major else torch.empty(d_in, d_sae)


class SAE(nn.Module, ABC):
    """Base SAE: x̂ = f(x) @ W_dec + b_dec with f(x) from the architecture's encoder.

    Parameters are ``W_enc`` (d_in × d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae × d_in, rows are
    the decoder directions) and ``b_dec`` (d_in), named as SAEBench expects.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[SAEConfig]]
    #: whether the trainer keeps decoder rows at unit norm (and removes the parallel gradient)
    unit_norm_decoder: ClassVar[bool] = True
    #: store W_enc latents-major (see :func:`encoder_weight`): set where the sparse path computes
    #: W_enc's gradient, which it builds latent by latent
    latents_major_encoder: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("encode", "decode", "forward"):
            if method in cls.__dict__:
                setattr(cls, method, _accepting_arrays(cls.__dict__[method]))

    def extra_repr(self) -> str:
        cfg = self.cfg
        k = getattr(cfg, "k", None)
        return (f"architecture={getattr(self, 'name', type(self).__name__)!r}, d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}" + (f", k={k}" if k is not None else ""))

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if cfg.d_in <= 0 or cfg.d_sae <= 0:
            cfg = cfg.resolved()
        self.cfg = cfg
        d, m = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(encoder_weight(d, m, self.latents_major_encoder))
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.W_dec = nn.Parameter(torch.empty(m, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.reset_parameters(torch.Generator().manual_seed(0))

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random unit-norm decoder rows; encoder = decoder transpose; zero biases."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ------------------------------------------------------------------ inference interface

    def pre_acts(self, acts_BD: Tensor) -> Tensor:
        """Encoder pre-activations (x − b_dec) @ W_enc + b_enc."""
        return (acts_BD - self.b_dec) @ self.W_enc + self.b_enc

    @abstractmethod
    def encode(self, acts_BD: Tensor) -> Tensor:
        """Dense codes (B × d_sae) for raw activations, as used at inference."""

    def encode_entries(self, acts_BD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(row, latent, value) of the positive entries of ``encode(acts_BD)``, sorted by row
        then latent. Architectures that select a few latents per row override it to skip the
        dense codes matrix; the entries and values must stay exactly ``encode``'s."""
        codes = self.encode(acts_BD)
        rows, latents = (codes > 0).nonzero(as_tuple=True)
        return rows, latents, codes[rows, latents]

    def decode(self, codes_BM: Tensor) -> Tensor:
        """Reconstruction codes @ W_dec + b_dec."""
        return codes_BM @ self.W_dec + self.b_dec

    def forward(self, acts_BD: Tensor) -> Tensor:
        return self.reconstruct(acts_BD, self.encode(acts_BD))

    # ------------------------------------------------------------------ paired data
    # An SAE reconstructs its input; a transcoder predicts a target read at another hook.
    # Its training rows are [input | target] side by side, and these three methods are all the
    # trainer and the evaluations need to know about that.

    @property
    def data_width(self) -> int:
        """Width of one data row (input and target side by side for paired architectures)."""
        return self.cfg.d_in

    def split_data(self, rows_BW: Tensor) -> tuple[Tensor, Tensor]:
        """(encoder input, reconstruction target) of data rows; an SAE's target is its input."""
        return rows_BW, rows_BW

    def reconstruct(self, inputs_BD: Tensor, codes_BM: Tensor) -> Tensor:
        """The prediction of the target from the codes (and, for skip transcoders, the input)."""
        return self.decode(codes_BM)

    @torch.no_grad()
    def init_decoder_bias(self, center_BW: Tensor) -> None:
        """Start b_dec at a central point of the data (the geometric median of a sample)."""
        self.b_dec.copy_(self.split_data(center_BW[None])[1][0])

    # ------------------------------------------------------------------ training interface

    @abstractmethod
    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        """The loss to minimise on one batch, with its named parts."""

    def matmul_flops_per_token(self) -> float:
        """Matrix-multiply FLOPs one training row costs (for the logged peak share).

        Dense default: encoder and decoder forward (2·d·m each) plus the backward products
        for W_enc, the codes and W_dec (2·d·m each). Architectures with sparse paths override.
        """
        return 10.0 * self.cfg.d_in * self.cfg.d_sae

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` work on raw ``x`` with identical codes.

        pre = (s·x − b)·W + c = (x − b/s)·(s·W) + c, and x̂_raw = x̂/s = f·(W_dec/s) + b_dec/s.
        Subclasses with other input-side weights (Gated) override this.
        """
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def extra_state_for_checkpoint(self) -> dict[str, float]:
        """Python-side state that must survive a resume (most state lives in buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, float]) -> None:
        pass


def _accepting_arrays(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Let encode/decode/forward take a NumPy array (converted to a float32 tensor on the SAE's
    device) as well as a tensor."""

    @functools.wraps(fn)
    def wrapper(self: SAE, x: Any, *args: Any, **kwargs: Any) -> Tensor:
        if isinstance(x, np.ndarray):
            if np.iscomplexobj(x):
                raise TypeError("complex activations are not supported; pass real values")
            arr = np.asarray(x, dtype=np.float32)
            if not arr.flags.writeable:  # e.g. a read-only memory map; torch wants writable
                arr = arr.copy()
            x = torch.from_numpy(arr).to(self.W_dec.device)
        elif not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")
        return fn(self, x, *args, **kwargs)

    return wrapper


def recon_loss(acts_BD: Tensor, recon_BD: Tensor) -> Tensor:
    """Mean over rows of the squared error summed over the input dimension (in fp32, also
    under bf16 autocast)."""
    return (acts_BD.float() - recon_BD.float()).pow(2).sum(dim=-1).mean()


def normalised_aux_loss(residual_BD: Tensor, aux_recon_BD: Tensor,
                        group: BatchGroup | None = None) -> Tensor:
    """AuxK-style loss ‖e − ê‖² divided by the variance of e (scale-free).

    The variance is a constant (e is detached); under data parallelism it is taken over the
    whole batch, so the loss equals the single-process one.
    """
    err = (residual_BD.float() - aux_recon_BD.float()).pow(2).sum(-1).mean()
    with torch.no_grad():
        if group is None or group.world_size == 1:
            var = (residual_BD - residual_BD.mean(0)).pow(2).sum(-1).mean()
        else:
            mean_D = group.mean(residual_BD.mean(0))
            var = group.mean(residual_BD.pow(2).sum(-1).mean()) - mean_D.pow(2).sum()
    return err / var.clamp_min(1e-12)


def linear_warmup(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def default_k_aux(d_in: int, d_sae: int) -> int:
    return max(1, min(d_sae, d_in // 2))


def safe_log(x: float) -> float:
    return math.log(max(x, 1e-30))
