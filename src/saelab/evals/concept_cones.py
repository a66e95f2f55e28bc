"""Concept cones (Rocchi-Henry, Fel, Franchi 2025): does the SAE's decoder cone contain the
directions of a concept-bottleneck model trained on the same activations?

1. **CBM head**: one logistic concept direction w_k per labelled concept (a class or board
   cell), fit on the training inputs' activations (mean-pooled for multi-token inputs); its
   held-out AUC is reported as the reference.
2. **Containment**: r_k = min_{λ≥0} ‖ŵ_k − Σ_{j∈T_s} λ_j d̂_j‖ over the s decoder atoms with the
   largest cosine to w_k (non-negative least squares); reported as mean(1 − r_k) and the share
   of concepts with r_k < ``tau``.
3. **Geometric alignment**: mean over concepts of max_j cos(w_k, d_j).
4. **Semantic alignment**: held-out AUC of the best-cosine latent's activation for the concept
   (and of the cone combination Σ_j λ_j f_j over T_s).

A concept with no positives (or no negatives) in the training split has no CBM direction, and
one without both classes in the test split has no AUC: NaN with a reason, left out of the means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.evals.concept_data import JsonResult, LabelledSet, check_sae_width, sae_l0
from saelab.evals.probing import fit_logistic
from saelab.metrics.concepts import NAN, Undefined, auc, best_cosine, cone_residual, nan_mean


@dataclass
class ConeConfig:
    """Options of the concept-cone evaluation."""

    s: int = option(5, "containment uses the s decoder atoms closest to each concept")
    tau: float = option(0.5, "a concept counts as contained when its residual is below this")
    l2: float = option(1.0, "L2 strength of the CBM head's logistic directions (1/C)")
    seed: int = option(0, "seed of the train/test split for sets without a fixed split")
    test_fraction: float = option(0.3, "held-out share for sets without a fixed split")

    def validate(self) -> None:
        if self.s < 1:
            raise ConfigError("s must be at least 1")
        if not 0 < self.tau <= 1:
            raise ConfigError("tau must be in (0, 1]")


@dataclass
class ConceptHead:
    """The CBM directions of one labelled set and their held-out AUCs."""

    set_name: str
    directions_KD: Tensor  # NaN rows where undefined
    cbm_auc: list[float]
    train_rows: Tensor
    test_rows: Tensor
    undefined: list[Undefined]


def fit_concept_head(labels: LabelledSet, cfg: ConeConfig) -> ConceptHead:
    """One logistic direction per concept on the training rows."""
    train, test = labels.split(cfg.seed, cfg.test_fraction)
    x = labels.inputs.pooled_raw("mean")
    y = labels.labels_NK.bool()
    ok = y[train].any(0) & ~y[train].all(0)
    undefined = [Undefined(f"{labels.name}/{labels.class_names[k]}",
                           "no positives or no negatives in the training split: no direction")
                 for k in (~ok).nonzero().flatten().tolist()]
    directions = torch.full((y.shape[1], x.shape[1]), NAN)
    aucs = [NAN] * y.shape[1]
    if ok.any():
        head = fit_logistic(x[train], y[train][:, ok], l2=cfg.l2)
        directions[ok] = head.directions().float()
        logits = head.logits(x[test])
        for col, k in enumerate(ok.nonzero().flatten().tolist()):
            aucs[k] = auc(logits[:, col], y[test, k])
    return ConceptHead(labels.name, directions, aucs, train, test, undefined)


@dataclass
class ConceptCone:
    concept: str
    residual: float
    best_cosine: float
    best_latent: int
    cone_latents: list[int]
    semantic_auc: float  # the best-cosine latent
    cone_auc: float  # Σ λ_j f_j over the cone atoms
    cbm_auc: float
    undefined: str = ""


@dataclass
class ConeSetScores:
    set_name: str
    n_concepts: int
    n_scored: int
    containment: float  # mean (1 − r)
    contained_share: float  # share with r < tau
    geometric_alignment: float
    semantic_alignment: float
    cone_semantic_alignment: float
    cbm_auc: float
    concepts: list[ConceptCone]


@dataclass
class ConeResult(JsonResult):
    sae: str
    d_sae: int
    l0: float
    sets: dict[str, ConeSetScores]
    undefined: list[Undefined] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def score_set(sae: SAE, labels: LabelledSet, head: ConceptHead, cfg: ConeConfig,
              undefined: list[Undefined]) -> ConeSetScores:
    check_sae_width(sae, labels.inputs.acts_TD.shape[1])
    atoms = sae.W_dec.detach().double()
    atoms_np = atoms.numpy()
    codes_test = labels.inputs.subset(head.test_rows).pooled_codes(sae, "mean").double()
    y_test = labels.labels_NK[head.test_rows].bool()
    cos, best = best_cosine(head.directions_KD.nan_to_num(0.0), atoms)
    rows = []
    for k, name in enumerate(labels.class_names):
        w = head.directions_KD[k]
        if torch.isnan(w).any():
            rows.append(ConceptCone(name, NAN, NAN, -1, [], NAN, NAN, NAN, "no CBM direction"))
            continue
        residual, top, lam = cone_residual(w.numpy(), atoms_np, cfg.s)
        # λ weighs unit atoms; latent j contributes f_j·‖d_j‖ along d̂_j
        norms = np.linalg.norm(atoms_np[top], axis=1)
        cone_score = codes_test[:, top] @ torch.from_numpy(lam * norms)
        j = int(best[k])
        semantic = auc(codes_test[:, j], y_test[:, k])
        reason = "" if math.isfinite(semantic) else "no positives or no negatives in the test split"
        if reason:
            undefined.append(Undefined(f"{labels.name}/{name}", reason))
        rows.append(ConceptCone(name, residual, float(cos[k]), j, top, semantic,
                                auc(cone_score, y_test[:, k]), head.cbm_auc[k], reason))
    scored = [r for r in rows if math.isfinite(r.residual)]
    return ConeSetScores(
        labels.name, len(rows), len(scored), nan_mean([1 - r.residual for r in scored]),
        nan_mean([float(r.residual < cfg.tau) for r in scored]),
        nan_mean([r.best_cosine for r in scored]), nan_mean([r.semantic_auc for r in scored]),
        nan_mean([r.cone_auc for r in scored]), nan_mean([r.cbm_auc for r in scored]), rows)


@torch.no_grad()
def evaluate_sae(sae: SAE, sets: dict[str, LabelledSet], heads: dict[str, ConceptHead],
                 cfg: ConeConfig, name: str = "sae") -> ConeResult:
    cfg.validate()
    undefined: list[Undefined] = [u for h in heads.values() for u in h.undefined]
    scores = {n: score_set(sae, sets[n], heads[n], cfg, undefined) for n in sets}
    first = next(iter(sets.values()))
    return ConeResult(name, sae.cfg.d_sae, sae_l0(sae, first.inputs.acts_TD), scores, undefined,
                      to_dict(cfg))


def run(saes: dict[str, SAE], sets: dict[str, LabelledSet], cfg: ConeConfig
        ) -> dict[str, ConeResult]:
    """Cone containment and alignment of every named SAE against one CBM head per set."""
    if not sets:
        raise ConfigError("concept cones need at least one labelled set")
    cfg.validate()
    heads = {n: fit_concept_head(s, cfg) for n, s in sets.items()}
    return {name: evaluate_sae(sae, sets, heads, cfg, name) for name, sae in saes.items()}
