"""LFADS loss pieces: Poisson likelihood, Gaussian and AR(1) KL terms, and the masks of
coordinated dropout and sample validation.

Every function works elementwise or per trial so the trainer can choose which entries count.
"""

from __future__ import annotations

import math

import torch


def poisson_nll(log_rates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Elementwise −log Poisson(counts | exp(log_rates)) = λ − k·log λ + log k!  (rates per bin)."""
    return torch.exp(log_rates) - counts * log_rates + torch.lgamma(counts + 1.0)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor, prior_mean: torch.Tensor,
                prior_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) ‖ N(prior_mean, e^prior_logvar)) per trial, summed over the last dim:
    ½ Σ [log σp²/σq² + (σq² + (μq−μp)²)/σp² − 1]."""
    var_ratio = torch.exp(logvar - prior_logvar)
    sq = (mean - prior_mean) ** 2 / torch.exp(prior_logvar)
    return 0.5 * (var_ratio + sq - 1.0 - (logvar - prior_logvar)).sum(-1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 / torch.exp(logvar))


def ar1_log_prob(u: torch.Tensor, log_tau: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log p(u_{1:T}) under independent AR(1) processes per input dimension, summed over time and
    dimensions: u_1 ~ N(0, σ²), u_t | u_{t−1} ~ N(α u_{t−1}, σ²(1−α²)) with α = exp(−1/τ).
    ``u`` is [trials, time, dims]; ``log_tau``, ``log_var`` are [dims]. Returns [trials]."""
    alpha = torch.exp(-1.0 / torch.exp(log_tau))
    first = gaussian_log_prob(u[:, 0], torch.zeros_like(u[:, 0]), log_var.expand_as(u[:, 0]))
    noise_logvar = log_var + torch.log1p(-alpha**2)
    rest = gaussian_log_prob(u[:, 1:], alpha * u[:, :-1], noise_logvar.expand_as(u[:, 1:]))
    return first.sum(-1) + rest.sum((-1, -2))


def ar1_kl(u: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, log_tau: torch.Tensor,
           log_var: torch.Tensor) -> torch.Tensor:
    """One-sample Monte-Carlo KL(q(u) ‖ AR(1) prior) per trial: log q(u) − log p(u) at the
    sampled ``u`` (the AR(1) prior couples time steps, so there is no closed form per step)."""
    log_q = gaussian_log_prob(u, mean, logvar).sum((-1, -2))
    return log_q - ar1_log_prob(u, log_tau, log_var)


def coordinated_dropout(counts: torch.Tensor, rate: float,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each input entry with probability ``rate``. Returns the network input
    counts·M/(1−rate) and the gradient mask g = 1 − M (1 where an entry was dropped): the loss
    may learn only from entries the network could not see."""
    if rate <= 0:
        return counts, torch.ones_like(counts)
    keep = (torch.rand(counts.shape, generator=generator, device=counts.device) >= rate)
    keep = keep.to(counts.dtype)
    return counts * keep / (1.0 - rate), 1.0 - keep


def stop_gradient_where(loss: torch.Tensor, grad_mask: torch.Tensor) -> torch.Tensor:
    """ℓ⊙g + stopgrad(ℓ⊙(1−g)): the same value as ``loss``, but gradients flow only where
    ``grad_mask`` is 1 (CD's trick: the kept entries still count in the reported loss)."""
    return loss * grad_mask + (loss * (1.0 - grad_mask)).detach()


def sample_validation_mask(shape: tuple[int, ...], rate: float, seed: int) -> torch.Tensor:
    """A fixed mask (1 = held out) of entries never input and never trained on; their
    reconstruction cost is the sample-validation metric. Same seed, same mask."""
    if rate <= 0:
        return torch.zeros(shape)
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).float()


def apply_sample_validation(counts: torch.Tensor, sv_mask: torch.Tensor,
                            rate: float) -> torch.Tensor:
    """The input with held-out entries zeroed and the rest scaled by 1/(1−rate)."""
    if rate <= 0:
        return counts
    return counts * (1.0 - sv_mask) / (1.0 - rate)
