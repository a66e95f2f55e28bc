"""Toy ground-truth activations as a trainer source (an ActivationSource over a ToyModel)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from saelab.toy.generator import ToyModel


class ToySource:
    """Adapts a ToyModel to the ActivationSource protocol (deterministic, resumable)."""

    def __init__(self, model: ToyModel, seed: int = 0) -> None:
        self.model = model
        self.seed = seed

    @property
    def d_in(self) -> int:
        return self.model.cfg.d_model

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        return self.model.batches(batch_size, seed=self.seed, start_batch=start_batch)

    def sample(self, n: int) -> Tensor:
        acts, _ = self.model.sample(n, torch.Generator().manual_seed(self.seed + 7919))
        return acts
