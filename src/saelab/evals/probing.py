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


def fit_logistic_batched(x_BNF: Tensor, y_BN: Tensor, mask_BN: Tensor, l2: float = 1.0,
                         max_iter: int = 50, balanced: bool = False) -> LinearProbe:
    """B independent binary logistic regressions, each on its own rows (``mask_BN`` marks the
    real rows of the padded batch), solved together by damped Newton steps (exact for these
    small, convex problems; no optimiser state). Same loss as :func:`fit_logistic`. The
    returned probe holds ``(B, F)`` weights: use :func:`batched_accuracy`."""
    x = x_BNF.double()
    m = mask_BN.double()
    n_B = m.sum(1).clamp_min(1)
    mean = (x * m[..., None]).sum(1) / n_B[:, None]
    var = (((x - mean[:, None]) ** 2) * m[..., None]).sum(1) / n_B[:, None]
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    z = torch.cat([(x - mean[:, None]) / std[:, None], torch.ones_like(x[..., :1])], 2)
    y = y_BN.double()
    if balanced:  # each problem's positives and negatives weigh the same in total
        pos = (y * m).sum(1, keepdim=True).clamp_min(1)
        neg = ((1 - y) * m).sum(1, keepdim=True).clamp_min(1)
        m = m * torch.where(y > 0, n_B[:, None] / (2 * pos), n_B[:, None] / (2 * neg))
    ridge = torch.full((z.shape[2],), l2, dtype=torch.float64)
    ridge[-1] = 1e-10  # the bias is not penalised
    w = torch.zeros(z.shape[0], z.shape[2], dtype=torch.float64)

    def loss(w_BF: Tensor) -> Tensor:
        logits = torch.einsum("bnf,bf->bn", z, w_BF)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=m,
                                                                   reduction="none").sum(1)
        return bce + 0.5 * (ridge * w_BF ** 2).sum(1)

    current = loss(w)
    for _ in range(max_iter):
        prob = torch.sigmoid(torch.einsum("bnf,bf->bn", z, w))
        grad = torch.einsum("bnf,bn->bf", z, m * (prob - y)) + ridge * w
        hess = torch.einsum("bnf,bn,bng->bfg", z, m * prob * (1 - prob), z) + torch.diag(ridge)
        step = torch.linalg.solve(hess, grad[..., None])[..., 0]
        scale = torch.ones(w.shape[0], dtype=torch.float64)
        for _ in range(30):  # halve the step where the loss would rise
            trial = w - scale[:, None] * step
            new = loss(trial)
            worse = new > current + 1e-12 * current.abs()
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        w, current = trial, new
        if float((scale[:, None] * step).abs().max()) < 1e-9:
            break
    return LinearProbe(mean, std, w[:, :-1].contiguous(), w[:, -1].contiguous())


def batched_accuracy(probe: LinearProbe, x_BNF: Tensor, y_BN: Tensor, mask_BN: Tensor
                     ) -> Tensor:
    """``(B,)`` accuracy of each of a batched probe's regressions on its own (masked) rows."""
    z = (x_BNF.double() - probe.mean_F[:, None]) / probe.std_F[:, None]
    logits = torch.einsum("bnf,bf->bn", z, probe.weight_FK) + probe.bias_K[:, None]
    right = ((logits > 0) == y_BN.bool()).double() * mask_BN.double()
    return right.sum(1) / mask_BN.double().sum(1).clamp_min(1)


def pad_rows(features: list[Tensor], labels: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-problem ``(n_b, F)`` features and ``(n_b,)`` labels into padded
    ``(B, N, F)``, ``(B, N)`` tensors and the ``(B, N)`` mask of real rows."""
    n = max(f.shape[0] for f in features)
    x = torch.zeros(len(features), n, features[0].shape[1], dtype=features[0].dtype)
    y = torch.zeros(len(features), n, dtype=torch.bool)
    mask = torch.zeros(len(features), n, dtype=torch.bool)
    for b, (f, lab) in enumerate(zip(features, labels, strict=True)):
        x[b, :f.shape[0]] = f
        y[b, :f.shape[0]] = lab.bool()
        mask[b, :f.shape[0]] = True
    return x, y, mask
