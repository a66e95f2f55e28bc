"""LFADS metrics, each defined once here and in docs/metrics.md ("LFADS").

- ``rate_r2``: variance-weighted R² of inferred against true rates over all trials × bins and
  neurons (each neuron centred on its own mean).
- ``latent_r2``: R² of the true latents predicted from inferred factors by a linear map (least
  squares with intercept) fitted on other trials.
- ``co_bps``: Neural Latents Benchmark co-smoothing bits per spike on held-out neurons.
- ``decoding_r2``: R² of a behaviour-like variable decoded from inferred rates by ridge
  regression fitted on other trials.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln


def r2_per_dim(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """1 − Σ(y−ŷ)² / Σ(y−ȳ)² per last-axis dimension, over all leading axes."""
    y = true.reshape(-1, true.shape[-1]).astype(np.float64)
    yhat = pred.reshape(-1, pred.shape[-1]).astype(np.float64)
    ss_res = ((y - yhat) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - ss_res / np.maximum(ss_tot, 1e-12)


def rate_r2(pred_rates: np.ndarray, true_rates: np.ndarray) -> float:
    """Variance-weighted R² of inferred vs true rates ([trials, time, neurons]):
    1 − Σ_n Σ(λ_n − λ̂_n)² / Σ_n Σ(λ_n − λ̄_n)². Unlike the plain mean of per-neuron R², a few
    nearly constant (low-rate) neurons, whose own R² can be hugely negative, cannot swamp it."""
    y = true_rates.reshape(-1, true_rates.shape[-1]).astype(np.float64)
    yhat = pred_rates.reshape(-1, pred_rates.shape[-1]).astype(np.float64)
    ss_tot = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / max(ss_tot, 1e-12)


def _design(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return np.concatenate([flat, np.ones((len(flat), 1))], 1)


def linear_fit(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Weights W (with an intercept row) minimising ‖[x 1]W − y‖² + ridge‖W‖²."""
    a = _design(x)
    b = y.reshape(-1, y.shape[-1]).astype(np.float64)
    reg = ridge * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # never shrink the intercept
    return np.linalg.solve(a.T @ a + reg, a.T @ b)


def linear_predict(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (_design(x) @ weights).reshape(*x.shape[:-1], weights.shape[1])


def latent_r2(factors_fit: np.ndarray, latents_fit: np.ndarray, factors_eval: np.ndarray,
              latents_eval: np.ndarray) -> float:
    """Mean over latent dimensions of the R² of a linear map factors → true latents, fitted on
    the ``fit`` trials and scored on the ``eval`` trials."""
    weights = linear_fit(factors_fit, latents_fit, ridge=1e-6)
    return float(r2_per_dim(linear_predict(factors_eval, weights), latents_eval).mean())


def decoding_r2(rates_fit: np.ndarray, behavior_fit: np.ndarray, rates_eval: np.ndarray,
                behavior_eval: np.ndarray, ridge: float = 1.0) -> float:
    """Mean over behaviour dimensions of the R² of ridge regression from inferred rates to the
    behaviour, fitted on the ``fit`` trials and scored on the ``eval`` trials."""
    weights = linear_fit(rates_fit, behavior_fit, ridge=ridge)
    return float(r2_per_dim(linear_predict(rates_eval, weights), behavior_eval).mean())


def poisson_log_likelihood(rates: np.ndarray, counts: np.ndarray) -> float:
    """Σ log Poisson(counts | rates) with rates in spikes per bin (floored at 1e-9)."""
    lam = np.maximum(rates.astype(np.float64), 1e-9)
    k = counts.astype(np.float64)
    return float((k * np.log(lam) - lam - gammaln(k + 1)).sum())


def co_bps(pred_rates: np.ndarray, counts: np.ndarray) -> float:
    """Co-smoothing bits per spike (Neural Latents Benchmark, Pei et al. 2021) on held-out
    neurons ([trials, time, heldout]):
    (log L(λ̂; y) − log L(λ̄; y)) / (n_spikes · ln 2), λ̄ = each neuron's mean count per bin over
    the evaluated data. 0 = no better than a constant rate; higher is better."""
    n_spikes = float(counts.sum())
    if n_spikes == 0:
        raise ValueError("co-bps needs at least one held-out spike")
    mean = np.broadcast_to(counts.reshape(-1, counts.shape[-1]).mean(0), counts.shape)
    gain = poisson_log_likelihood(pred_rates, counts) - poisson_log_likelihood(mean, counts)
    return gain / (n_spikes * math.log(2))
