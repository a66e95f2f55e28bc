"""Monosemanticity score (MS) of Pach et al. (2025) for SAE latents and for raw neurons.

MS asks whether the inputs a unit fires on are alike to an independent embedder. For N inputs
with one activation a_n per unit (an image's CLS token; for texts the max over its tokens, so a
text "fires" a unit when any of its tokens does) and unit-norm embeddings E_n of the inputs
(MiniLM sentence embeddings for texts; any Hugging Face vision model for images; the one-hot
board state for game positions):

    MS_k = Σ_{n<m} ã_n ã_m cos(E_n, E_m) / Σ_{n<m} ã_n ã_m,   ã = min-max normalised a.

Reported as mean ± std over the units where it is defined, for the SAE's latents and for the
layer's raw neurons (the paper's comparison); dead or constant units are NaN and counted with
their reason. ``saelab.metrics.concepts.monosemanticity_scores`` holds the formula.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.evals.concept_data import InputActivations, JsonResult, sae_l0
from saelab.metrics.concepts import (
    Undefined,
    monosemanticity_scores,
    monosemanticity_undefined,
    nan_mean,
    nan_std,
)


@dataclass
class MonosemanticityConfig:
    """Options of the monosemanticity evaluation."""

    pool: str = option("max", "activation of a multi-token input: max or mean over its tokens")
    per_latent: bool = option(False, "also write every latent's MS into the result")

    def validate(self) -> None:
        if self.pool not in ("max", "mean"):
            raise ConfigError(f"pool must be max or mean, not {self.pool!r}")


@dataclass
class UnitScores:
    """MS over a set of units (SAE latents or neurons)."""

    mean: float
    std: float
    median: float
    n_units: int
    n_defined: int
    undefined_counts: dict[str, int]  # reason -> number of units


@dataclass
class MonosemanticityResult(JsonResult):
    sae: str
    d_sae: int
    l0: float
    n_inputs: int
    embedder: str
    latents: UnitScores
    neurons: UnitScores
    per_latent: list[float] | None = None
    undefined: list[Undefined] = field(default_factory=list)  # the first 20 latents
    config: dict[str, Any] = field(default_factory=dict)


def unit_scores(acts_NM: Tensor, embeddings_NE: Tensor) -> tuple[UnitScores, Tensor,
                                                                 list[Undefined]]:
    ms = monosemanticity_scores(acts_NM, embeddings_NE)
    undefined = monosemanticity_undefined(acts_NM)
    finite = ms[~ms.isnan()]
    median = float(finite.median()) if finite.numel() else float("nan")
    counts = Counter(u.reason for u in undefined)
    return (UnitScores(nan_mean(ms), nan_std(ms), median, int(ms.shape[0]), int(finite.numel()),
                       dict(counts)), ms, undefined)


def neuron_scores(inputs: InputActivations, embeddings_NE: Tensor, cfg: MonosemanticityConfig
                  ) -> UnitScores:
    """MS of the layer's raw neurons (the baseline; independent of any SAE)."""
    return unit_scores(inputs.pooled_raw(cfg.pool), embeddings_NE)[0]


def evaluate_sae(sae: SAE, inputs: InputActivations, embeddings_NE: Tensor,
                 cfg: MonosemanticityConfig, name: str = "sae", embedder: str = "",
                 neurons: UnitScores | None = None) -> MonosemanticityResult:
    cfg.validate()
    if embeddings_NE.shape[0] != inputs.n_inputs:
        raise ConfigError(f"{inputs.n_inputs} inputs but {embeddings_NE.shape[0]} embeddings; "
                          "embed exactly the inputs the activations come from")
    latents, ms, undefined = unit_scores(inputs.pooled_codes(sae, cfg.pool), embeddings_NE)
    return MonosemanticityResult(
        name, sae.cfg.d_sae, sae_l0(sae, inputs.acts_TD), inputs.n_inputs, embedder, latents,
        neurons or neuron_scores(inputs, embeddings_NE, cfg),
        [float(v) for v in ms] if cfg.per_latent else None, undefined[:20], to_dict(cfg))


def run(saes: dict[str, SAE], inputs: InputActivations, embeddings_NE: Tensor,
        cfg: MonosemanticityConfig, embedder: str = "") -> dict[str, MonosemanticityResult]:
    """MS of every named SAE's latents and of the raw neurons on the same inputs."""
    if embeddings_NE.shape[0] != inputs.n_inputs:
        raise ConfigError(f"{inputs.n_inputs} inputs but {embeddings_NE.shape[0]} embeddings; "
                          "embed exactly the inputs the activations come from")
    neurons = neuron_scores(inputs, embeddings_NE, cfg)
    return {name: evaluate_sae(sae, inputs, embeddings_NE, cfg, name, embedder, neurons)
            for name, sae in saes.items()}
