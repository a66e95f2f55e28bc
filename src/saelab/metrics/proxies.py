"""Correct-L0 proxies of Chanin & Garriga-Alonso ("Sparse but Wrong", methods.md section 5).

An SAE trained at the wrong L0 mixes features while its reconstruction still looks good. Two
quantities computed from the decoder alone are minimised at the true L0:

- c_dec, the mean |cos| over all pairs of decoder rows (`decoder_pairwise_cosine`, defined in
  `saelab.metrics.matching`);
- s_n^dec, the nth decoder projection: project centred inputs on the unit decoder rows,
  Z = (x − b_dec)·Ŵ_decᵀ, flatten a batch's B×h matrix, sort it in descending order and read
  entry n·B (0-based). With n above any plausible L0, this measures how strongly inputs project
  onto latents that should be off, which mixing raises.

Formulas and choices: docs/metrics.md, section "Correct-L0 proxies".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.metrics.matching import decoder_pairwise_cosine

DEFAULT_PROXY_BATCH = 1024


def default_projection_n(n_latents: int) -> int:
    """The default n of s_n^dec: half the latents (the paper uses 16k of 32k)."""
    return max(1, n_latents // 2)


def decoder_projections(acts_BD: Tensor, W_dec_MD: Tensor, b_dec_D: Tensor) -> Tensor:
    """Z = (x − b_dec)·Ŵ_decᵀ (B × h), with Ŵ_dec's rows scaled to unit norm.

    Rows are normalised here because a saved SAE has its training-time input scale folded into
    W_dec, so its rows are no longer unit-norm; the proxy assumes they are.
    """
    unit_MD = torch.nn.functional.normalize(W_dec_MD.detach().float(), dim=1)
    return (acts_BD.detach().float() - b_dec_D.detach().float()) @ unit_MD.T


def nth_decoder_projection(acts_BD: Tensor, W_dec_MD: Tensor, b_dec_D: Tensor,
                           n: int | None = None) -> float:
    """s_n^dec of one batch: z_↓[n·B], the (n·B + 1)-th largest entry of Z (0-based index n·B).

    `n` must be in [1, h − 1] (h = number of latents); the default is h // 2.
    """
    if acts_BD.ndim != 2 or acts_BD.shape[0] == 0:
        raise ValueError(f"acts must be a non-empty (batch, d_model) tensor, got {tuple(acts_BD.shape)}")
    n_latents = W_dec_MD.shape[0]
    n = default_projection_n(n_latents) if n is None else n
    if not 1 <= n < n_latents:
        raise ValueError(f"n of s_n^dec must be in [1, {n_latents - 1}] (fewer than the "
                         f"{n_latents} latents), got {n}; pick n above any plausible L0")
    z_flat = decoder_projections(acts_BD, W_dec_MD, b_dec_D).flatten()
    # The (r+1)-th largest value is the (N − r)-th smallest: kthvalue is O(N), no full sort.
    rank = n * acts_BD.shape[0]
    return float(z_flat.kthvalue(z_flat.numel() - rank).values)


@dataclass(frozen=True)
class ProxyMetrics:
    """The correct-L0 proxies of one SAE.

    Attributes:
        decoder_pairwise_cosine: c_dec = (1/C(h,2)) Σ_{i<j} |cos(d_i, d_j)|.
        nth_decoder_projection: s_n^dec, mean over evaluation batches of size `batch_size`.
        n: the n of s_n^dec.
        batch_size: rows per batch in s_n^dec (its value depends weakly on it).
    """

    decoder_pairwise_cosine: float
    nth_decoder_projection: float
    n: int
    batch_size: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


class ProxyAccumulator:
    """Streams activations in any batching and computes s_n^dec over fixed-size batches.

    Rows are buffered until `batch_size` are available, so the result does not depend on how the
    caller splits the data; a trailing partial batch is used only if no full batch was seen.
    """

    def __init__(self, W_dec_MD: Tensor, b_dec_D: Tensor, n: int | None = None,
                 batch_size: int = DEFAULT_PROXY_BATCH) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.W_dec_MD, self.b_dec_D = W_dec_MD.detach(), b_dec_D.detach()
        self.n = default_projection_n(W_dec_MD.shape[0]) if n is None else n
        self.batch_size = batch_size
        self._pending: list[Tensor] = []
        self._n_pending = 0
        self._values: list[float] = []

    def update(self, acts_BD: Tensor) -> None:
        self._pending.append(acts_BD.detach())
        self._n_pending += acts_BD.shape[0]
        while self._n_pending >= self.batch_size:
            rows = torch.cat(self._pending)
            self._values.append(nth_decoder_projection(rows[: self.batch_size], self.W_dec_MD,
                                                       self.b_dec_D, self.n))
            rest = rows[self.batch_size:]
            self._pending, self._n_pending = [rest], rest.shape[0]

    def compute(self) -> ProxyMetrics:
        values = list(self._values)
        if not values:
            if self._n_pending == 0:
                raise ValueError("no rows accumulated; call update() first")
            values = [nth_decoder_projection(torch.cat(self._pending), self.W_dec_MD,
                                             self.b_dec_D, self.n)]
        return ProxyMetrics(
            decoder_pairwise_cosine=decoder_pairwise_cosine(self.W_dec_MD),
            nth_decoder_projection=sum(values) / len(values),
            n=self.n,
            batch_size=self.batch_size,
        )


def proxy_metrics(acts_ND: Tensor, W_dec_MD: Tensor, b_dec_D: Tensor, n: int | None = None,
                  batch_size: int = DEFAULT_PROXY_BATCH) -> ProxyMetrics:
    """ProxyMetrics of one set of rows (a one-shot ProxyAccumulator)."""
    acc = ProxyAccumulator(W_dec_MD, b_dec_D, n, batch_size)
    acc.update(acts_ND)
    return acc.compute()


__all__ = [
    "DEFAULT_PROXY_BATCH",
    "ProxyAccumulator",
    "ProxyMetrics",
    "decoder_pairwise_cosine",
    "decoder_projections",
    "default_projection_n",
    "nth_decoder_projection",
    "proxy_metrics",
    "training_c_dec_rows",
    "training_proxies",
]


#: Above this many latents the training log's c_dec is taken over a fixed random subset of this
#: many decoder rows: exact c_dec costs latents²·d per log line (about 30 s at 65,536 latents on
#: a 2-core CPU), and the mean over the subset's pairs is an unbiased estimate of the mean over
#: all pairs. `saelab eval` and `l0-search` compute it exactly.
TRAINING_C_DEC_ROWS = 4096


def training_c_dec_rows(n_latents: int) -> Tensor | None:
    """The fixed row subset of the training log's c_dec (None: all rows). The same rows at every
    log line, so the logged curve moves only with the decoder; drawn from its own generator, so
    logging never touches training's random streams."""
    if n_latents <= TRAINING_C_DEC_ROWS:
        return None
    return torch.randperm(n_latents, generator=torch.Generator().manual_seed(0))[:TRAINING_C_DEC_ROWS]


def training_proxies(sae: torch.nn.Module, acts_BD: Tensor) -> dict[str, float]:
    """c_dec (over at most TRAINING_C_DEC_ROWS rows) and s_n^dec (default n) of an SAE on one
    training batch, for the metrics log."""
    W_dec, b_dec = sae.W_dec, sae.b_dec
    assert isinstance(W_dec, Tensor) and isinstance(b_dec, Tensor)
    if W_dec.shape[0] < 2:
        return {}
    rows = training_c_dec_rows(W_dec.shape[0])
    decoder = W_dec if rows is None else W_dec[rows.to(W_dec.device)]
    return {"c_dec": decoder_pairwise_cosine(decoder),
            "s_n_dec": nth_decoder_projection(acts_BD, W_dec, b_dec)}
