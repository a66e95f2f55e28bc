"""Logistic-regression probes shared by the concept evaluations.

One full-batch L-BFGS fit of independent binary logistic regressions (one per label column) on
standardised features with an L2 penalty, like scikit-learn's ``LogisticRegression(C=1)`` per
class. The fitted probe maps raw features to logits, and :meth:`LinearProbe.directions` gives
each label's direction in the raw feature space (used as a concept direction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearProbe:
    """Logits = ((x − mean)/std) @ weight_FK + bias_K."""

    mean_F: Tensor
    std_F: Tensor
    weight_FK: Tensor
    bias_K: Tensor

    def logits(self, x_NF: Tensor) -> Tensor:
        return ((x_NF.double() - self.mean_F) / self.std_F) @ self.weight_FK + self.bias_K

    def predict(self, x_NF: Tensor) -> Tensor:
        return self.logits(x_NF) > 0

    def directions(self) -> Tensor:
        """``(K, F)``: each label's weight vector in raw feature space (w/std)."""
        return (self.weight_FK / self.std_F[:, None]).T


def fit_logistic(x_NF: Tensor, labels_NK: Tensor, l2: float = 1.0, max_iter: int = 100,
                 balanced: bool = False) -> LinearProbe:
    """Fit K independent logistic regressions on the same features.

    Loss per label = mean BCE + l2·‖w‖²/(2N) (sklearn's C = 1/l2 scaling); ``balanced`` weights
    the positives and negatives of each label equally (sklearn's ``class_weight="balanced"``).
    Constant features get std 1 so they contribute nothing.
    """
    if labels_NK.ndim == 1:
        labels_NK = labels_NK[:, None]
    x = x_NF.double()
    y = labels_NK.double()
    n = x.shape[0]
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    if balanced:
        pos = y.sum(0).clamp_min(1)
        neg = (n - y.sum(0)).clamp_min(1)
        sample_w = torch.where(y > 0, n / (2 * pos), n / (2 * neg))
    else:
        sample_w = torch.ones_like(y)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = z @ weight + bias
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, weight=sample_w, reduction="sum") + 0.5 * l2 * (weight ** 2).sum()) / n
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def accuracy(probe: LinearProbe, x_NF: Tensor, labels_NK: Tensor) -> Tensor:
    """``(K,)`` share of rows predicted right, per label."""
    if labels_NK.ndim == 1:
        labels_NK = labels_NK[:, None]
    return (probe.predict(x_NF) == labels_NK.bool()).double().mean(0)
