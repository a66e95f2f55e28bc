"""Train SAEs on toy data with known features and score them against the truth.

Used by ``saelab toy``, ``saelab demo`` and ``benchmarks/toy_recovery.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelab.architectures.base import SAE
from saelab.metrics.core import core_metrics
from saelab.metrics.matching import matching_metrics
from saelab.registry import config_from_dict
from saelab.toy.generator import ToyConfig, ToyModel
from saelab.toy.source import ToySource
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer

PRESETS: dict[str, Callable[..., ToyConfig]] = {"chanin_large": ToyConfig.chanin_large, "osae": ToyConfig.osae,
           "chanin_small": ToyConfig.chanin_small, "hierarchical": ToyConfig.hierarchical}



@dataclass
class ToyScore:
    name: str
    architecture: str
    l0: float
    explained_variance: float
    stability: float
    orderedness: float
    recovered_share: float
    shrinkage: float
    dead_share: float
    dense_share: float

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def score_sae(name: str, sae: SAE, toy: ToyModel, n_eval: int = 20000, seed: int = 12345) -> ToyScore:
    """Metrics against the true features on fresh samples (not seen in training)."""
    acts, _ = toy.sample(n_eval, torch.Generator().manual_seed(seed))
    sae.eval()
    codes = sae.encode(acts)
    recon = sae.decode(codes)
    core = core_metrics(acts, recon, codes)
    alive = core.latent_density_M > 0
    # Dead latents keep their (meaningless) initial directions; match only live ones so a dead
    # latent cannot "recover" a feature by accident, but normalise by the true feature count.
    # Ord comes from the same live-only matching as Stab: it uses only the ranks of the matched
    # latents, and dropping dead rows keeps the live latents' relative order.
    learned = sae.W_dec.detach()[alive] if bool(alive.any()) else sae.W_dec.detach()
    match = matching_metrics(learned, toy.features_GD)
    return ToyScore(name, sae.name, core.l0, core.explained_variance, match["stability"],
                    match["orderedness"], match["recovered_share"], core.shrinkage,
                    core.dead_share, core.dense_share)


def train_toy(toy: ToyModel, saes: dict[str, dict[str, Any]], train: TrainConfig, out_dir: Path,
              data_seed: int = 0) -> dict[str, SAE]:
    """Train every SAE in ``saes`` (name → options incl. architecture) on one toy stream."""
    cfgs = {n: config_from_dict(dict(o), where=f"saes.{n}") for n, o in saes.items()}
    trainer = Trainer(cfgs, train, ToySource(toy, seed=data_seed), out_dir)
    return trainer.fit()


def pick_closest_l0(scores: list[ToyScore], target_l0: float) -> ToyScore:
    """The SAE of a sweep whose L0 is closest to the target (ties: higher stability)."""
    return min(scores, key=lambda s: (abs(math.log(max(s.l0, 1e-3) / target_l0)), -s.stability))


def format_table(scores: list[ToyScore], columns: tuple[str, ...] = (
        "name", "l0", "explained_variance", "stability", "orderedness", "recovered_share",
        "shrinkage", "dead_share")) -> str:
    """A Markdown table of scores."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for s in scores:
        cells = []
        for c in columns:
            v = getattr(s, c)
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Candidate settings per architecture for a preset: TopK-family SAEs get k = true L0; the others
# get a few sparsity coefficients, trained side by side on the same stream, and the one whose
# L0 lands closest to the true L0 is reported ("each at its best setting for that L0").
def candidate_settings(arch: str, true_l0: float, d_sae: int, steps: int) -> list[dict[str, Any]]:
    k = max(1, round(true_l0))
    base: dict[str, Any] = {"architecture": arch, "d_sae": d_sae}
    if arch in ("topk", "ordered"):
        return [{**base, "k": k}]
    if arch in ("batchtopk", "matryoshka"):
        opts = {**base, "k": k, "threshold_start_step": steps // 2, "threshold_beta": 0.99}
        if arch == "matryoshka":
            opts["group_fractions"] = [0.2, 0.3, 0.5]
        return [opts]
    coefficients = COEFFICIENTS[arch]
    key = "l0_coefficient" if arch == "jumprelu" else "l1_coefficient"
    return [{**base, key: c} for c in coefficients]


COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "relu": (0.25, 0.5, 1.0, 2.0),
    "panneal": (0.25, 0.5, 1.0, 2.0),
    "gated": (1.0, 2.0, 4.0),
    "gated_panneal": (1.0, 2.0, 4.0),
    "jumprelu": (3.0, 10.0, 30.0, 100.0),
}


@dataclass
class RecoveryRun:
    toy: ToyModel
    best: list[ToyScore]
    all_scores: list[ToyScore]
    saes: dict[str, SAE]


def run_recovery(toy: ToyModel, archs: list[str], out_dir: Path, steps: int = 3000,
                 batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
                 d_sae: int | None = None, progress: bool = True) -> RecoveryRun:
    """Train every architecture (with its candidate settings) on one toy stream and score."""
    d_sae = d_sae or toy.cfg.n_features
    saes: dict[str, dict[str, Any]] = {}
    names_by_arch: dict[str, list[str]] = {}
    for arch in archs:
        candidates = candidate_settings(arch, toy.true_l0, d_sae, steps)
        names = [arch] if len(candidates) == 1 else [f"{arch}_{i}" for i in range(len(candidates))]
        names_by_arch[arch] = names
        saes.update(zip(names, candidates, strict=True))
    train = TrainConfig(total_tokens=steps * batch_size, batch_size=batch_size, lr=lr,
                        lr_warmup_steps=min(200, steps // 10), lr_decay_start=0.8,
                        checkpoint_every=max(1, steps // 4), log_every=max(1, steps // 20),
                        dead_after_tokens=100 * batch_size, seed=seed, progress=progress)
    trained = train_toy(toy, saes, train, out_dir, data_seed=seed)
    scores = {n: score_sae(n, s, toy) for n, s in trained.items()}
    best: list[ToyScore] = []
    chosen: dict[str, SAE] = {}
    for arch, names in names_by_arch.items():
        pick = pick_closest_l0([scores[n] for n in names], toy.true_l0)
        chosen[arch] = trained[pick.name]
        best.append(dataclasses.replace(pick, name=arch))
    return RecoveryRun(toy, best, list(scores.values()), chosen)
