"""AlignSAE (Yang et al. 2025, arXiv 2512.02004): an SAE whose last ``n_relations`` latents are
"relation slots" bound to chosen concepts, the rest free.

Linear encoder and decoder, as in the paper's code: z = (x − b_dec)·W_enc + b_enc (no
activation function), x̂ = z·W_dec + b_dec, decoder rows not normalised.

- Stage 1 (``stage=1``): reconstruction only.
- Stage 2 (``stage=2``, usually with ``init_from`` = the stage-1 SAE):
  L = λ_rec·MSE(x̂, x) + λ_sp·mean|z_free| + λ_align·MSE(z_rel, onehot(r))
      + λ_indep·Σ_{i≠j} Cov(z_free)²_ij + λ_ortho·Σ Cov(z_rel, z_free)²
      + λ_val·CE(head_r(z_rel[r]), first answer token),
  with one value head per slot (an MLP from the slot's scalar value to token logits).

Training rows are ``[x | r | t]``: the activation, the asked relation's index and the answer's
first token id (exact small integers stored as floats, so any activation file or cache holds
them). Train with ``normalize_inputs=False``: the trainer's input scale would scale the labels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext
from saelab.config import ConfigError, option
from saelab.metrics.core import explained_variance
from saelab.registry import register

LABEL_COLUMNS = 2  # relation index, answer first-token id


@dataclass
class AlignSAEConfig(SAEConfig):
    n_relations: int = option(6, "relation slots: the last n_relations latents")
    stage: int = option(1, "1 = reconstruction only; 2 = the full AlignSAE loss")
    value_vocab: int = option(0, "tokens the value heads predict (the model's vocabulary size); "
                              "needed for stage 2")
    value_hidden: int = option(256, "hidden width of each slot's value head (paper: 256)")
    lambda_rec: float = option(1.0, "weight of the reconstruction MSE")
    lambda_sparse: float = option(1e-3, "weight of mean |z_free| (L1 on the free latents)")
    lambda_align: float = option(1.0, "weight of MSE(z_rel, onehot(relation))")
    lambda_indep: float = option(1e-2, "weight of Σ_{i≠j} Cov(z_free)²_ij")
    lambda_ortho: float = option(1e-2, "weight of Σ Cov(z_rel, z_free)²")
    lambda_value: float = option(0.5, "weight of the value heads' cross-entropy")
    init_from: str = option("", "start from this saved SAE (the stage-1 run's final SAE)")

    @property
    def n_free(self) -> int:
        return self.d_sae - self.n_relations

    def resolved(self, d_in: int | None = None) -> AlignSAEConfig:
        """``d_in`` here is the data-row width: the activation width plus the two labels."""
        width = None if d_in is None else d_in - LABEL_COLUMNS
        if width is not None and width <= 0:
            raise ConfigError(f"AlignSAE rows are [activation | relation | answer token]; "
                              f"width {d_in} leaves no activation")
        out = SAEConfig.resolved(self, width)
        assert isinstance(out, AlignSAEConfig)
        return out

    def validate(self) -> None:
        super().validate()
        if self.n_relations < 2:
            raise ConfigError(f"n_relations must be at least 2, got {self.n_relations}")
        if self.n_free < 1:
            raise ConfigError(f"d_sae={self.d_sae} leaves no free latents besides the "
                              f"{self.n_relations} relation slots; raise d_sae")
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and self.lambda_value > 0 and self.value_vocab <= 0:
            raise ConfigError("stage 2 needs value_vocab (the model's vocabulary size) for the "
                              "value heads, or lambda_value=0")
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name.startswith("lambda_")}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ConfigError(f"loss weights must be >= 0, got {bad}")


# ---------------------------------------------------------------------------- the loss terms
# Each term exactly as the paper's code computes it (means, biased covariances).


def reconstruction_loss(acts_BD: Tensor, recon_BD: Tensor) -> Tensor:
    """mean over rows and dimensions of (x̂ − x)²."""
    return (recon_BD - acts_BD).pow(2).mean()


def sparsity_loss(free_BF: Tensor) -> Tensor:
    """mean over rows and free latents of |z_free|."""
    return free_BF.abs().mean()


def alignment_loss(rel_BR: Tensor, relation_B: Tensor) -> Tensor:
    """mean over rows and slots of (z_rel − onehot(r))²."""
    target = nn.functional.one_hot(relation_B, rel_BR.shape[1]).to(rel_BR.dtype)
    return (rel_BR - target).pow(2).mean()


def covariance(a_BN: Tensor, b_BM: Tensor) -> Tensor:
    """(N, M) batch covariance (1/B normalisation) of the columns of ``a`` and ``b``."""
    a = a_BN - a_BN.mean(0, keepdim=True)
    b = b_BM - b_BM.mean(0, keepdim=True)
    return a.T @ b / a_BN.shape[0]


def independence_loss(free_BF: Tensor) -> Tensor:
    """Σ_{i≠j} Cov(z_free)²_ij: decorrelates the free latents from each other.

    Computed as ‖Z_c·Z_cᵀ‖²_F / B² − Σ_i Var_i² (Z_c the centred codes): the same number as
    the F × F covariance's squared off-diagonal sum, via a B × B Gram matrix (B ≪ F).
    """
    centred = free_BF - free_BF.mean(0, keepdim=True)
    n = free_BF.shape[0]
    gram = centred @ centred.T
    variances = centred.pow(2).sum(0) / n
    return gram.pow(2).sum() / n ** 2 - variances.pow(2).sum()


def orthogonality_loss(rel_BR: Tensor, free_BF: Tensor) -> Tensor:
    """Σ_{r,j} Cov(z_rel, z_free)²_rj: decorrelates the slots from the free latents."""
    return covariance(rel_BR, free_BF).pow(2).sum()


def value_loss(logits_BV: Tensor, tokens_B: Tensor) -> Tensor:
    """Cross-entropy of the value heads' logits against the answer's first token."""
    return nn.functional.cross_entropy(logits_BV, tokens_B)


# ---------------------------------------------------------------------------- the SAE


@register("alignsae")
class AlignSAE(SAE):
    """Linear SAE with relation slots and value heads (see the module docstring)."""

    config_class: ClassVar[type[SAEConfig]] = AlignSAEConfig
    unit_norm_decoder: ClassVar[bool] = False  # the paper's decoder is unconstrained
    cfg: AlignSAEConfig

    def __init__(self, cfg: SAEConfig) -> None:
        assert isinstance(cfg, AlignSAEConfig)
        if cfg.d_in <= 0 or cfg.d_sae <= 0:
            cfg = cfg.resolved()
        # value heads: slot r's scalar → ReLU(s·w1_r + c1_r) → ·W2_r + c2_r (paper: 1→256→V)
        n, h, v = cfg.n_relations, cfg.value_hidden, max(cfg.value_vocab, 1)
        super().__init__(cfg)
        self.head_w1 = nn.Parameter(torch.zeros(n, h))
        self.head_b1 = nn.Parameter(torch.zeros(n, h))
        # one parameter per head: indexing a stacked (n, h, v) tensor would make autograd
        # zero-fill the whole stack once per head and step
        self.head_W2 = nn.ParameterList([nn.Parameter(torch.zeros(h, v)) for _ in range(n)])
        self.head_b2 = nn.Parameter(torch.zeros(n, v))
        self.reset_parameters(torch.Generator().manual_seed(0))
        # from now on reset_parameters (the trainer's initialisation) also reads init_from;
        # building or loading a saved SAE never does (its folder may be long gone)
        self._built = True

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random init (decoder = encoder transpose, heads as nn.Linear); then, at the
        trainer's initialisation, the weights of ``init_from`` if set."""
        super().reset_parameters(generator)
        if not hasattr(self, "head_w1"):  # called from SAE.__init__ before the heads exist
            return
        h = self.cfg.value_hidden
        self.head_w1.copy_(torch.rand(self.head_w1.shape, generator=generator) * 2 - 1)
        self.head_b1.copy_(torch.rand(self.head_b1.shape, generator=generator) * 2 - 1)
        bound = h ** -0.5  # nn.Linear's default init
        for w in self.head_W2:
            w.copy_((torch.rand(w.shape, generator=generator) * 2 - 1) * bound)
        self.head_b2.copy_((torch.rand(self.head_b2.shape, generator=generator) * 2 - 1) * bound)
        if self.cfg.init_from and getattr(self, "_built", False):
            self._load_start(self.cfg.init_from)

    def _load_start(self, path: str) -> None:
        from saelab.io import load  # lazy: io imports the architectures

        start = load(path)
        if not isinstance(start, AlignSAE):
            raise ConfigError(f"init_from={path} holds a {start.name!r} SAE; give the folder of "
                              "an AlignSAE (the stage-1 run's final/<name>)")
        if (start.cfg.d_in, start.cfg.d_sae, start.cfg.n_relations) != (
                self.cfg.d_in, self.cfg.d_sae, self.cfg.n_relations):
            raise ConfigError(f"init_from={path} has d_in={start.cfg.d_in}, d_sae="
                              f"{start.cfg.d_sae}, n_relations={start.cfg.n_relations}; this "
                              f"SAE has {self.cfg.d_in}, {self.cfg.d_sae}, "
                              f"{self.cfg.n_relations}: use the same sizes")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).copy_(getattr(start, name))

    @torch.no_grad()
    def init_decoder_bias(self, center_BW: Tensor) -> None:
        if not self.cfg.init_from:  # a started SAE keeps its trained b_dec
            super().init_decoder_bias(center_BW)

    # ------------------------------------------------------------------ inference

    def encode(self, acts_BD: Tensor) -> Tensor:
        return self.pre_acts(acts_BD)

    def relation_slots(self, codes_BM: Tensor) -> Tensor:
        return codes_BM[..., self.cfg.n_free:]

    def free_latents(self, codes_BM: Tensor) -> Tensor:
        return codes_BM[..., :self.cfg.n_free]

    def slot_latent(self, relation: int) -> int:
        """Index of relation ``relation``'s slot among all latents."""
        return self.cfg.n_free + relation

    def value_logits(self, codes_BM: Tensor, relation_B: Tensor) -> Tensor:
        """(B, value_vocab) logits of the asked relation's value head, read from its slot."""
        slot_B = self.relation_slots(codes_BM).gather(1, relation_B[:, None])[:, 0]
        logits = codes_BM.new_zeros(codes_BM.shape[0], self.head_b2.shape[1])
        for r in range(self.cfg.n_relations):  # one small matmul per head, no (B, H, V) gather
            rows = (relation_B == r).nonzero().squeeze(1)
            if rows.numel():
                hidden = torch.relu(slot_B[rows, None] * self.head_w1[r] + self.head_b1[r])
                logits = logits.index_copy(0, rows, hidden @ self.head_W2[r] + self.head_b2[r])
        return logits

    # ------------------------------------------------------------------ paired data

    @property
    def data_width(self) -> int:
        return self.cfg.d_in + LABEL_COLUMNS

    def split_data(self, rows_BW: Tensor) -> tuple[Tensor, Tensor]:
        acts = self._acts(rows_BW)
        return acts, acts

    def _acts(self, rows_BW: Tensor) -> Tensor:
        if rows_BW.shape[-1] != self.data_width:
            raise ConfigError(f"AlignSAE rows must have width d_in + 2 = {self.data_width} "
                              f"([activation | relation | answer token]), got {rows_BW.shape[-1]}")
        return rows_BW[..., :self.cfg.d_in]

    def labels(self, rows_BW: Tensor) -> tuple[Tensor, Tensor]:
        """(relation index, answer first-token id) of each row, checked."""
        self._acts(rows_BW)
        raw = rows_BW[..., self.cfg.d_in:]
        ints = raw.round()
        if not torch.equal(ints, raw):
            raise ConfigError("AlignSAE label columns are not whole numbers: were the rows "
                              "scaled? train with normalize_inputs=False (the trainer's input "
                              "scale multiplies the labels too)")
        relation, token = ints[:, 0].long(), ints[:, 1].long()
        if relation.min() < 0 or relation.max() >= self.cfg.n_relations:
            raise ConfigError(f"relation labels must be in 0..{self.cfg.n_relations - 1}, got "
                              f"{int(relation.min())}..{int(relation.max())}")
        if self.cfg.stage == 2 and (token.min() < 0 or token.max() >= self.head_b2.shape[1]):
            raise ConfigError(f"answer token ids must be in 0..{self.head_b2.shape[1] - 1} "
                              f"(value_vocab); got {int(token.min())}..{int(token.max())}")
        return relation, token

    # ------------------------------------------------------------------ training

    def training_loss(self, acts_BD: Tensor, ctx: StepContext) -> LossOutput:
        x = self._acts(acts_BD)
        codes = self.encode(x)
        recon = self.decode(codes)
        cfg = self.cfg
        rec = reconstruction_loss(x, recon)
        parts = {"mse": rec}
        total = cfg.lambda_rec * rec
        extras = {"explained_variance": explained_variance(x, recon.detach())}
        if cfg.stage == 2:
            relation, token = self.labels(acts_BD)
            free, rel = self.free_latents(codes), self.relation_slots(codes)
            parts["sparsity"] = sparsity_loss(free)
            parts["align"] = alignment_loss(rel, relation)
            parts["indep"] = independence_loss(free)
            parts["ortho"] = orthogonality_loss(rel, free)
            total = total + cfg.lambda_sparse * parts["sparsity"] + \
                cfg.lambda_align * parts["align"] + cfg.lambda_indep * parts["indep"] + \
                cfg.lambda_ortho * parts["ortho"]
            extras["slot_accuracy"] = float((rel.argmax(-1) == relation).float().mean())
            if cfg.lambda_value > 0:
                logits = self.value_logits(codes, relation)
                parts["value"] = value_loss(logits, token)
                total = total + cfg.lambda_value * parts["value"]
                extras["value_accuracy"] = float((logits.argmax(-1) == token).float().mean())
        nonzero = codes != 0
        return LossOutput(total=total, parts=parts, fired_M=nonzero.any(0),
                          l0=nonzero.sum(-1).float().mean(), recon_BD=None, extras=extras)
