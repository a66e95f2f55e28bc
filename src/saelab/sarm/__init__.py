"""SARM: reward models whose head reads SAE latents (Zhang, Shi, Li et al. 2026; methods.md §9).

The reward of a sequence is r = wᵀz, a linear head without bias on the SAE latents z of the
backbone's activation at the sequence's last token (the backbone truncated at the hook: later
layers never run). z are the SAE's pre-activations by default (SARM's choice), or its codes.

- :mod:`saelab.sarm.model`: :class:`SARM` (features, reward, per-latent attribution w_j·z_j,
  reward steering by editing a latent before the head), saving and loading.
- :mod:`saelab.sarm.train`: Bradley–Terry loss + λ·NMSE reconstruction on the detached
  activation; modes head / head_sae / all; pairwise accuracy.
- :mod:`saelab.sarm.data`: chosen/rejected pairs from JSON lines, tokenised for any HF causal LM.
- :mod:`saelab.sarm.othello`: an offline preference task with ground truth — Othello move pairs
  ranked by a documented shallow search.
"""

from saelab.sarm.model import SARM, SARMConfig, load_sarm
from saelab.sarm.train import (
    PairTokens,
    SARMTrainConfig,
    bradley_terry_loss,
    nmse,
    pairwise_accuracy,
    train_sarm,
)

__all__ = ["SARM", "PairTokens", "SARMConfig", "SARMTrainConfig", "bradley_terry_loss",
           "load_sarm", "nmse", "pairwise_accuracy", "train_sarm"]
