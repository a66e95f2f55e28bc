"""Synthetic activations with known ground-truth features.

Each sample is x = Σ_i m_i f_i, a sparse sum of g unit feature directions f_i ∈ R^d. Feature i
fires with probability p_i (optionally correlated with the others through a Gaussian copula), and
a firing feature gets magnitude m_i = a_i · ReLU(μ_i + σ_i ε), ε ~ N(0, 1). This is the toy setup
of Chanin & Garriga-Alonso ("Sparse but Wrong") and, with a Zipf prior on p, the toy model of the
Ordered SAE paper. See docs/toy.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

FIRING_SCHEDULES = ("linear", "zipf", "explicit")
CORRELATION_KINDS = ("none", "random", "explicit")

# Tolerances for checking a user-supplied correlation matrix.
_SYMMETRY_TOL = 1e-6
_DIAGONAL_TOL = 1e-6
_PSD_TOL = 1e-6

# Rows per chunk in ToyModel.sample: big enough for fast kernels, small enough to stay in cache.
_SAMPLE_CHUNK_ROWS = 65_536

# Independent random streams derived from ToyConfig.seed, so that e.g. switching the correlation
# on or off leaves the feature directions unchanged.
_FEATURE_STREAM = 0
_CORRELATION_STREAM = 1

ScalarOrPerFeature = float | list[float]


@dataclass
class ToyConfig:
    """Configuration of a ground-truth toy dataset.

    The defaults are the large toy model of Chanin & Garriga-Alonso (g=50, d=100, linear firing
    probabilities with expected L0 ≈ 11, random correlations, magnitudes 1 ± 0.15).
    """

    n_features: int = field(default=50, metadata={"help": "g: number of ground-truth features."})
    d_model: int = field(
        default=100,
        metadata={
            "help": "d: activation width. g <= d gives orthonormal features; g > d gives "
            "random unit vectors (superposition)."
        },
    )
    firing: str = field(
        default="linear",
        metadata={
            "help": "Firing-probability schedule: 'linear' (p_max down to p_min), 'zipf' "
            "(p_i ∝ i^-zipf_alpha scaled to target_l0) or 'explicit' (firing_probs).",
            "choices": FIRING_SCHEDULES,
        },
    )
    p_max: float = field(
        default=0.05 + 0.345 * 49 / 50,
        metadata={"help": "Linear schedule: firing probability of feature 0."},
    )
    p_min: float = field(
        default=0.05, metadata={"help": "Linear schedule: firing probability of the last feature."}
    )
    zipf_alpha: float = field(
        default=1.2, metadata={"help": "Zipf schedule: exponent alpha in p_i ∝ i^-alpha."}
    )
    target_l0: float = field(
        default=5.0,
        metadata={"help": "Zipf schedule: expected number of firing features per sample (Σ p_i)."},
    )
    firing_probs: list[float] | None = field(
        default=None,
        metadata={"help": "Explicit schedule: one firing probability per feature, each in [0, 1]."},
    )
    correlation: str = field(
        default="random",
        metadata={
            "help": "Co-firing structure: 'none' (independent), 'random' (random correlation "
            "matrix of strength correlation_strength) or 'explicit' (correlation_matrix).",
            "choices": CORRELATION_KINDS,
        },
    )
    correlation_strength: float = field(
        default=0.5,
        metadata={
            "help": "Random correlation: weight s in C = (1-s)·I + s·R, in [0, 1]; 0 = independent."
        },
    )
    correlation_matrix: list[list[float]] | None = field(
        default=None,
        metadata={
            "help": "Explicit correlation: g×g matrix (symmetric, PSD, unit diagonal) of the "
            "Gaussian copula."
        },
    )
    magnitude_scale: ScalarOrPerFeature = field(
        default=1.0,
        metadata={"help": "a in m = a·ReLU(mu + sigma·eps): scalar or one per feature."},
    )
    magnitude_mean: ScalarOrPerFeature = field(
        default=1.0,
        metadata={"help": "mu in m = a·ReLU(mu + sigma·eps): scalar or one per feature."},
    )
    magnitude_std: ScalarOrPerFeature = field(
        default=0.15,
        metadata={"help": "sigma in m = a·ReLU(mu + sigma·eps), >= 0: scalar or one per feature."},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the dataset's structure (feature directions, random correlation "
            "matrix). Sampling has its own seed."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and how to fix it."""
        _require(self.n_features >= 1, f"n_features must be >= 1, got {self.n_features}")
        _require(self.d_model >= 1, f"d_model must be >= 1, got {self.d_model}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        self._validate_firing()
        self._validate_correlation()
        for name in ("magnitude_scale", "magnitude_mean", "magnitude_std"):
            _per_feature(getattr(self, name), self.n_features, name)
        std_G = _per_feature(self.magnitude_std, self.n_features, "magnitude_std")
        _require(bool((std_G >= 0).all()), "magnitude_std must be >= 0 for every feature")

    def _validate_firing(self) -> None:
        _require(
            self.firing in FIRING_SCHEDULES,
            f"firing must be one of {FIRING_SCHEDULES}, got {self.firing!r}",
        )
        if self.firing_probs is not None and self.firing != "explicit":
            raise ValueError("firing_probs is set but firing != 'explicit'; set firing='explicit'")
        if self.firing == "linear":
            for name in ("p_min", "p_max"):
                value = getattr(self, name)
                _require(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")
        elif self.firing == "zipf":
            _require(self.zipf_alpha >= 0, f"zipf_alpha must be >= 0, got {self.zipf_alpha}")
            _require(
                0 < self.target_l0 <= self.n_features,
                f"target_l0 must be in (0, n_features={self.n_features}], got {self.target_l0}",
            )
        else:
            _require(
                self.firing_probs is not None,
                "firing='explicit' needs firing_probs (one probability per feature)",
            )
            probs_G = _per_feature(self.firing_probs or [], self.n_features, "firing_probs")
            _require(
                bool(((probs_G >= 0) & (probs_G <= 1)).all()),
                "every entry of firing_probs must be in [0, 1]",
            )

    def _validate_correlation(self) -> None:
        _require(
            self.correlation in CORRELATION_KINDS,
            f"correlation must be one of {CORRELATION_KINDS}, got {self.correlation!r}",
        )
        if self.correlation_matrix is not None and self.correlation != "explicit":
            raise ValueError(
                "correlation_matrix is set but correlation != 'explicit'; set correlation='explicit'"
            )
        if self.correlation == "random":
            _require(
                0.0 <= self.correlation_strength <= 1.0,
                f"correlation_strength must be in [0, 1], got {self.correlation_strength}",
            )
        elif self.correlation == "explicit":
            _require(
                self.correlation_matrix is not None,
                "correlation='explicit' needs correlation_matrix (a g×g correlation matrix)",
            )
            validate_correlation_matrix(
                torch.tensor(self.correlation_matrix, dtype=torch.float64), self.n_features
            )

    @classmethod
    def chanin_large(cls, seed: int = 0) -> ToyConfig:
        """Chanin & Garriga-Alonso's large toy model: g=50, d=100, true L0 ≈ 11.

        Firing probabilities fall linearly from 0.05 + 0.345·49/50 ≈ 0.388 to 0.05 (the paper's
        "0.345 down to 0.05" is the slope range: Σp = 10.95), correlations random, magnitudes
        1 ± 0.15. The random correlation matrix is saelab's construction, not the paper's.
        """
        return cls(
            n_features=50,
            d_model=100,
            firing="linear",
            p_max=0.05 + 0.345 * 49 / 50,
            p_min=0.05,
            correlation="random",
            magnitude_std=0.15,
            seed=seed,
        )

    @classmethod
    def chanin_small(cls, correlation_with_first: float = 0.4, seed: int = 0) -> ToyConfig:
        """Chanin & Garriga-Alonso's small toy model: g=5, d=20, p_i=0.4 (true L0 = 2).

        Feature 0 is correlated with features 1-4 at `correlation_with_first` (the paper uses
        +0.4 and -0.4); features 1-4 are mutually independent.
        """
        n_features = 5
        matrix = [[float(i == j) for j in range(n_features)] for i in range(n_features)]
        for other in range(1, n_features):
            matrix[0][other] = matrix[other][0] = correlation_with_first
        return cls(
            n_features=n_features,
            d_model=20,
            firing="explicit",
            firing_probs=[0.4] * n_features,
            correlation="explicit",
            correlation_matrix=matrix,
            magnitude_std=0.15,
            seed=seed,
        )

    @classmethod
    def osae(cls, seed: int = 0) -> ToyConfig:
        """The Ordered SAE paper's toy model: d=80, g=100, expected L0=5, Zipf prior alpha=1.2.

        Firing is independent; magnitude settings are not given in our notes, so saelab's
        defaults (1 ± 0.15) are used.
        """
        return cls(
            n_features=100,
            d_model=80,
            firing="zipf",
            zipf_alpha=1.2,
            target_l0=5.0,
            correlation="none",
            seed=seed,
        )


class ToyModel:
    """A sampler of toy activations with known features, built from a ToyConfig.

    The structure (directions, probabilities, correlations) is fixed by `cfg.seed`; samples are
    drawn from a separate generator, so one model can serve many reproducible streams.
    """

    def __init__(self, cfg: ToyConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._features_GD = _make_features(cfg.n_features, cfg.d_model, cfg.seed)
        self._probs_G = firing_probabilities(cfg)
        self._correlation_GG = correlation_matrix(cfg)
        self._copula_factor_GG = _copula_factor(self._correlation_GG)
        # Feature i fires iff z_i < Φ⁻¹(p_i) with z_i ~ N(0, 1), i.e. with probability p_i.
        self._thresholds_G = torch.special.ndtri(self._probs_G).float()
        self._scale_G = _per_feature(cfg.magnitude_scale, cfg.n_features, "magnitude_scale")
        self._mean_G = _per_feature(cfg.magnitude_mean, cfg.n_features, "magnitude_mean")
        self._std_G = _per_feature(cfg.magnitude_std, cfg.n_features, "magnitude_std")

    @property
    def features_GD(self) -> torch.Tensor:
        """Ground-truth feature directions, one unit-norm float32 row per feature."""
        return self._features_GD.clone()

    @property
    def firing_probs_G(self) -> torch.Tensor:
        """Marginal firing probability p_i of every feature (float64)."""
        return self._probs_G.clone()

    @property
    def correlation_GG(self) -> torch.Tensor:
        """Correlation matrix of the Gaussian copula (identity when firing is independent)."""
        return self._correlation_GG.clone()

    @property
    def true_l0(self) -> float:
        """Expected number of firing features per sample, Σ_i p_i.

        This counts firing events, including those whose magnitude the ReLU sets to 0; see
        `expected_nonzero_l0` for the expected number of nonzero codes.
        """
        return float(self._probs_G.sum())

    @property
    def expected_nonzero_l0(self) -> float:
        """Expected number of nonzero codes per sample, Σ_i p_i · P(a_i·ReLU(μ_i + σ_i ε) ≠ 0)."""
        std_G, mean_G = self._std_G, self._mean_G
        safe_std_G = torch.where(std_G > 0, std_G, torch.ones_like(std_G))
        positive_G = torch.where(
            std_G > 0, torch.special.ndtr(mean_G / safe_std_G), (mean_G > 0).double()
        )
        nonzero_G = positive_G * (self._scale_G != 0).double()
        return float((self._probs_G * nonzero_G).sum())

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n samples; returns (acts_ND, codes_NG), float32, with acts_ND = codes_NG @ features_GD.

        codes_NG holds each feature's magnitude (0 where it did not fire). Rows are generated in
        fixed-size chunks with in-place arithmetic, which keeps memory traffic low; the result is
        still a pure function of the generator's state and n.
        """
        _require(n >= 0, f"n must be >= 0, got {n}")
        codes_NG = torch.empty(n, self.cfg.n_features)
        acts_ND = torch.empty(n, self.cfg.d_model)
        for start in range(0, n, _SAMPLE_CHUNK_ROWS):
            stop = min(n, start + _SAMPLE_CHUNK_ROWS)
            codes_CG = codes_NG[start:stop]
            self._sample_codes_into(codes_CG, generator)
            torch.mm(codes_CG, self._features_GD, out=acts_ND[start:stop])
        return acts_ND, codes_NG

    def batch_at(self, index: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `index` of the stream `seed`: (acts_ND, codes_NG).

        A pure function of (seed, index, batch_size), which is what makes `batches` resumable.
        """
        _require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(batch_seed(seed, index))
        return self.sample(batch_size, generator)

    def batches(self, batch_size: int, seed: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Endless stream of activation batches (batch_size × d); start at `start_batch` to resume.

        Resuming at batch i yields exactly the batches an uninterrupted run yields from i on.
        """
        _require(start_batch >= 0, f"start_batch must be >= 0, got {start_batch}")
        index = start_batch
        while True:
            yield self.batch_at(index, batch_size, seed)[0]
            index += 1

    def _sample_firing(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        g = self.cfg.n_features
        if self._copula_factor_GG is None:
            # Independent Bernoulli; uniform < p is cheaper than a normal against a threshold.
            return torch.rand(n, g, generator=generator) < self._probs_G.float()
        latent_NG = torch.randn(n, g, generator=generator) @ self._copula_factor_GG.T
        return latent_NG < self._thresholds_G

    def _sample_codes_into(self, codes_CG: torch.Tensor, generator: torch.Generator | None) -> None:
        """Fill codes_CG in place: magnitudes where a feature fires, 0 elsewhere."""
        fires_CG = self._sample_firing(codes_CG.shape[0], generator)
        mean_G, std_G, scale_G = self._mean_G.float(), self._std_G.float(), self._scale_G.float()
        if bool((std_G == 0).all()):
            codes_CG.copy_((scale_G * mean_G.clamp(min=0)).expand_as(codes_CG))
        else:
            torch.randn(codes_CG.shape, generator=generator, out=codes_CG)
            codes_CG.mul_(std_G).add_(mean_G).relu_().mul_(scale_G)
        codes_CG.masked_fill_(~fires_CG, 0.0)


def firing_probabilities(cfg: ToyConfig) -> torch.Tensor:
    """Per-feature firing probabilities p_G (float64) from the config's schedule."""
    g = cfg.n_features
    if cfg.firing == "explicit":
        return _per_feature(cfg.firing_probs or [], g, "firing_probs")
    if cfg.firing == "linear":
        return torch.linspace(cfg.p_max, cfg.p_min, g, dtype=torch.float64)
    return zipf_probabilities(g, cfg.zipf_alpha, cfg.target_l0)


def zipf_probabilities(n_features: int, alpha: float, target_l0: float) -> torch.Tensor:
    """p_i ∝ i^-alpha (i = 1..g), scaled so that Σ p_i = target_l0 with every p_i <= 1.

    Probabilities that would exceed 1 are clipped to 1 and the remaining budget is spread over
    the other features in proportion to their Zipf weights, so the sum stays exactly target_l0.
    """
    _require(
        0 < target_l0 <= n_features,
        f"target_l0 must be in (0, n_features={n_features}], got {target_l0}",
    )
    weights_G = torch.arange(1, n_features + 1, dtype=torch.float64).pow(-alpha)
    saturated_G = torch.zeros(n_features, dtype=torch.bool)
    probs_G = torch.ones(n_features, dtype=torch.float64)
    while not bool(saturated_G.all()):
        budget = target_l0 - float(saturated_G.sum())
        scale = budget / float(weights_G[~saturated_G].sum())
        probs_G = torch.where(saturated_G, 1.0, weights_G * scale)
        overflow_G = (probs_G > 1.0) & ~saturated_G
        if not bool(overflow_G.any()):
            break
        saturated_G |= overflow_G
    return probs_G.clamp(max=1.0)


def correlation_matrix(cfg: ToyConfig) -> torch.Tensor:
    """The g×g copula correlation matrix C (float64) the config describes.

    'random': C = (1 − s)·I + s·R, where R is the Gram matrix of g random unit vectors in
    ceil(√g) dimensions (a valid correlation matrix with |R_ij| typically ≈ 1/√rank), so s sets
    the strength and C is a valid correlation matrix for every s in [0, 1].
    """
    g = cfg.n_features
    if cfg.correlation == "none":
        return torch.eye(g, dtype=torch.float64)
    if cfg.correlation == "explicit":
        return torch.tensor(cfg.correlation_matrix, dtype=torch.float64)
    rank = math.ceil(math.sqrt(g))
    generator = torch.Generator().manual_seed(batch_seed(cfg.seed, _CORRELATION_STREAM))
    factors_GR = torch.randn(g, rank, generator=generator, dtype=torch.float64)
    factors_GR = factors_GR / factors_GR.norm(dim=1, keepdim=True)
    s = cfg.correlation_strength
    return (1 - s) * torch.eye(g, dtype=torch.float64) + s * (factors_GR @ factors_GR.T)


def validate_correlation_matrix(matrix_GG: torch.Tensor, n_features: int) -> None:
    """Raise ValueError unless matrix_GG is a g×g finite, symmetric, unit-diagonal PSD matrix."""
    expected = (n_features, n_features)
    _require(
        tuple(matrix_GG.shape) == expected,
        f"correlation_matrix must have shape {expected} (n_features × n_features), "
        f"got {tuple(matrix_GG.shape)}",
    )
    _require(bool(torch.isfinite(matrix_GG).all()), "correlation_matrix contains NaN or inf")
    asymmetry = float((matrix_GG - matrix_GG.T).abs().max())
    _require(
        asymmetry <= _SYMMETRY_TOL,
        f"correlation_matrix must be symmetric (max |C - Cᵀ| = {asymmetry:.3g}); "
        "mirror the upper triangle onto the lower",
    )
    diagonal_error = float((matrix_GG.diagonal() - 1).abs().max())
    _require(
        diagonal_error <= _DIAGONAL_TOL,
        f"correlation_matrix must have a unit diagonal (max |C_ii - 1| = {diagonal_error:.3g}); "
        "pass correlations, not covariances",
    )
    smallest = float(torch.linalg.eigvalsh(matrix_GG).min())
    _require(
        smallest >= -_PSD_TOL,
        f"correlation_matrix is not positive semi-definite (smallest eigenvalue {smallest:.3g}); "
        "no joint Gaussian has these correlations — shrink the off-diagonal entries",
    )


def batch_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends only on (seed, index), well mixed by SeedSequence."""
    _require(seed >= 0 and index >= 0, f"seed and index must be >= 0, got {seed}, {index}")
    high, low = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)


def _make_features(n_features: int, d_model: int, seed: int) -> torch.Tensor:
    """Orthonormal rows when g <= d (QR of a Gaussian matrix), else random unit rows."""
    generator = torch.Generator().manual_seed(batch_seed(seed, _FEATURE_STREAM))
    gaussian_DG = torch.randn(d_model, n_features, generator=generator, dtype=torch.float64)
    if n_features <= d_model:
        q_DG, _ = torch.linalg.qr(gaussian_DG)
        return q_DG.T.contiguous().float()
    rows_GD = gaussian_DG.T
    return (rows_GD / rows_GD.norm(dim=1, keepdim=True)).contiguous().float()


def _copula_factor(correlation_GG: torch.Tensor) -> torch.Tensor | None:
    """L with L Lᵀ = C and unit-norm rows (so z = L ε has N(0, 1) marginals); None for C = I."""
    g = correlation_GG.shape[0]
    if torch.equal(correlation_GG, torch.eye(g, dtype=correlation_GG.dtype)):
        return None
    # eigh rather than Cholesky: a valid C may be singular (e.g. perfectly correlated features).
    eigenvalues_G, eigenvectors_GG = torch.linalg.eigh(correlation_GG)
    factor_GG = eigenvectors_GG * eigenvalues_G.clamp(min=0).sqrt()
    factor_GG = factor_GG / factor_GG.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return factor_GG.float()


def _per_feature(value: ScalarOrPerFeature, n_features: int, name: str) -> torch.Tensor:
    """Broadcast a scalar or check a per-feature list; returns a float64 tensor of length g."""
    if isinstance(value, int | float):
        values_G = torch.full((n_features,), float(value), dtype=torch.float64)
    else:
        values_G = torch.tensor(list(value), dtype=torch.float64)
        _require(
            values_G.shape == (n_features,),
            f"{name} must be a scalar or a list of n_features={n_features} numbers, "
            f"got {len(values_G)} numbers",
        )
    _require(bool(torch.isfinite(values_G).all()), f"{name} contains NaN or inf")
    return values_G


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
