"""Data-dependent initialisation: geometric median decoder bias and the input scale."""

from __future__ import annotations

import math

from torch import Tensor


def geometric_median(points_ND: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows."""
    pts = points_ND.double()
    guess = pts.mean(0)
    for _ in range(iters):
        dist = (pts - guess).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * pts).sum(0) / weights.sum()
        if (new - guess).norm() <= tol * max(1.0, float(guess.norm())):
            guess = new
            break
        guess = new
    return guess.to(points_ND.dtype)


def input_scale(sample_ND: Tensor) -> float:
    """s such that E‖s·x‖² = d_in, so hyperparameters transfer between models and layers."""
    mean_sq = float(sample_ND.double().pow(2).sum(1).mean())
    if mean_sq <= 0 or not math.isfinite(mean_sq):
        raise ValueError("cannot normalise: the activations are all zero or not finite")
    return math.sqrt(sample_ND.shape[1] / mean_sq)
