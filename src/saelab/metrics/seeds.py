"""Seed-to-seed statistics: mean ± 95% interval of a metric, and Stab/Ord between seeds' decoders.

- `mean_ci`: the mean over seeds with a two-sided 95% Student-t interval,
  mean ± t_{0.975, n−1} · s / √n (s = sample standard deviation). With one seed the interval is
  NaN: a single run says nothing about seed variance.
- `cross_seed_consistency`: Stab and Ord (saelab.metrics.matching; OSAE paper, Fel et al.) for
  every pair of seeds' decoders, Hungarian-matched on |cos|, averaged over the C(n, 2) pairs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats

from saelab.metrics.matching import match_directions, orderedness_of, stability_of

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """Mean over n seeds and the half-width of its 95% t-interval (NaN for n = 1)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.half_width, "low": self.low, "high": self.high,
                "n": self.n}

    def __str__(self) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.half_width:.2g}"


def mean_ci(values: Sequence[float]) -> MeanCI:
    """Mean and 95% Student-t half-width of `values` (one value per seed)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_ci needs at least one value")
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return MeanCI(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
    return MeanCI(mean, t * sd / math.sqrt(n), n)


def summarise_seeds(rows: Sequence[dict[str, float]]) -> dict[str, MeanCI]:
    """mean_ci of every numeric key shared by all rows (one row of metrics per seed)."""
    if not rows:
        raise ValueError("no rows to summarise")
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
            and all(k in r for r in rows)]
    return {k: mean_ci([float(r[k]) for r in rows]) for k in keys}


@dataclass(frozen=True)
class SeedConsistency:
    """Stab and Ord between seeds: per pair and mean ± 95% interval over the pairs.

    The pairs share seeds, so they are not independent; the interval over pairs is a
    description of spread, not a strict confidence interval.
    """

    stability: MeanCI
    orderedness: MeanCI
    pairs: list[tuple[int, int, float, float]]
    prefix: int | None

    def to_dict(self) -> dict[str, object]:
        return {"stability": self.stability.to_dict(), "orderedness": self.orderedness.to_dict(),
                "prefix": self.prefix,
                "pairs": [{"a": a, "b": b, "stability": s, "orderedness": o}
                          for a, b, s, o in self.pairs]}


def cross_seed_consistency(decoders: Sequence[torch.Tensor], prefix: int | None = None
                           ) -> SeedConsistency:
    """Stab(D_a, D_b) and Ord(D_a, D_b) for all seed pairs a < b (rows = latents).

    `prefix` keeps only the first p latents of each decoder (OSAE's truncated curves).
    Hungarian matching is O(h³): fine to a few thousand latents.
    """
    if len(decoders) < 2:
        raise ValueError(f"cross-seed consistency needs at least 2 seeds, got {len(decoders)}")
    pairs = []
    for a, b in itertools.combinations(range(len(decoders)), 2):
        da, db = decoders[a], decoders[b]
        if prefix is not None:
            da, db = da[:prefix], db[:prefix]
        match = match_directions(da, db)
        pairs.append((a, b, stability_of(match), orderedness_of(match)))
    return SeedConsistency(mean_ci([p[2] for p in pairs]), mean_ci([p[3] for p in pairs]),
                           pairs, prefix)
