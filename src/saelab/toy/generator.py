"""Synthetic activations with known ground-truth features.

Each sample is x = b + Σ_i m_i f_i, a sparse sum of g unit feature directions f_i ∈ R^d plus an
optional fixed data mean b. Feature i fires with probability p_i (optionally correlated with the
others through a Gaussian copula, and optionally in parent/child hierarchies whose children fire
only with their parent and exclude each other), and a firing feature gets magnitude
m_i = a_i · ReLU(μ_i + σ_i ε), ε ~ N(0, 1). This is the toy setup of Chanin & Garriga-Alonso
("Sparse but Wrong") and, with a Zipf prior on p, the toy model of the Ordered SAE paper. See
docs/toy.md.
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
_BIAS_STREAM = 2

# Orthogonalising features in superposition: Adam steps on the directions and its learning rate.
_ORTHOGONALISE_STEPS = 500
_ORTHOGONALISE_LR = 0.01
# Tolerance of Σ p_child <= p_parent.
_PROBABILITY_TOL = 1e-9

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
    hierarchy: list[list[int]] | None = field(
        default=None,
        metadata={
            "help": "Parent/child groups [parent, child, child, ...] (feature indices): a child "
            "fires only when its parent fires, and children of one parent exclude each other. "
            "Children's firing_probs are their marginal rates, so they must sum to <= the "
            "parent's. A child may be the parent of another group (deeper trees)."
        },
    )
    bias_norm: float = field(
        default=0.0,
        metadata={"help": "Norm of a fixed data mean b added to every sample (random direction)."},
    )
    orthogonalise: bool = field(
        default=False,
        metadata={
            "help": "With g > d (superposition), spread the random feature directions so their "
            "overlaps are as small as possible, instead of leaving them random."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the dataset's structure (feature directions, random correlation "
            "matrix, bias direction). Sampling has its own seed."
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
        _require(self.bias_norm >= 0, f"bias_norm must be >= 0, got {self.bias_norm}")
        if self.hierarchy is not None:
            hierarchy_order(self.hierarchy, self.n_features, firing_probabilities(self))

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
    def hierarchical(cls, seed: int = 0) -> ToyConfig:
        """A harder toy with a known answer: hierarchies, a data mean and superposition.

        g = 40 features in d = 32 dimensions, spread apart (orthogonalised as far as possible);
        features 0–4 are parents, each with 3 mutually exclusive children (features 5–19, child
        rate 0.08 each, so a parent's children cover 0.24 of its 0.3); features 20–39 are
        independent with rates falling linearly 0.2 → 0.05. Every sample carries a fixed mean b
        of norm 1. True L0 = 5·0.3 + 15·0.08 + 2.5 = 5.2.
        """
        parents = [0.3] * 5
        children = [0.08] * 15
        loners = torch.linspace(0.2, 0.05, 20, dtype=torch.float64).tolist()
        return cls(
            n_features=40,
            d_model=32,
            firing="explicit",
            firing_probs=parents + children + loners,
            correlation="none",
            hierarchy=[[p, *range(5 + 3 * p, 8 + 3 * p)] for p in range(5)],
            bias_norm=1.0,
            orthogonalise=True,
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
        self._features_GD = _make_features(cfg.n_features, cfg.d_model, cfg.seed,
                                           cfg.orthogonalise)
        self._bias_D = _make_bias(cfg.d_model, cfg.bias_norm, cfg.seed)
        self._probs_G = firing_probabilities(cfg)
        self._hierarchy = (hierarchy_order(cfg.hierarchy, cfg.n_features, self._probs_G)
                           if cfg.hierarchy else [])
        # Base firing rate drawn for each feature: children are decided by their parent instead.
        base_probs_G = self._probs_G.clone()
        for _, children in self._hierarchy:
            base_probs_G[children] = 0.0
        self._correlation_GG = correlation_matrix(cfg)
        self._copula_factor_GG = _copula_factor(self._correlation_GG)
        # Feature i fires iff z_i < Φ⁻¹(p_i) with z_i ~ N(0, 1), i.e. with probability p_i.
        self._base_probs_G = base_probs_G
        self._thresholds_G = torch.special.ndtri(base_probs_G).float()
        self._scale_G = _per_feature(cfg.magnitude_scale, cfg.n_features, "magnitude_scale")
        self._mean_G = _per_feature(cfg.magnitude_mean, cfg.n_features, "magnitude_mean")
        self._std_G = _per_feature(cfg.magnitude_std, cfg.n_features, "magnitude_std")

    @property
    def features_GD(self) -> torch.Tensor:
        """Ground-truth feature directions, one unit-norm float32 row per feature."""
        return self._features_GD.clone()

    @property
    def bias_D(self) -> torch.Tensor:
        """The fixed data mean b added to every sample (zeros when bias_norm = 0)."""
        return self._bias_D.clone()

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
        """Draw n samples; returns (acts_ND, codes_NG), float32, with
        acts_ND = codes_NG @ features_GD + bias_D.

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
        if self.cfg.bias_norm > 0:
            acts_ND += self._bias_D
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
            fires_NG = torch.rand(n, g, generator=generator) < self._base_probs_G.float()
        else:
            latent_NG = torch.randn(n, g, generator=generator) @ self._copula_factor_GG.T
            fires_NG = latent_NG < self._thresholds_G
        if self._hierarchy:
            self._apply_hierarchy(fires_NG, generator)
        return fires_NG

    def _apply_hierarchy(self, fires_NG: torch.Tensor, generator: torch.Generator | None) -> None:
        """Children fire only with their parent, at most one per parent: given the parent fired,
        child c fires with probability p_c / p_parent (one uniform per row picks which)."""
        for parent, children in self._hierarchy:
            p_parent = float(self._probs_G[parent])
            if p_parent == 0:
                continue
            edges_C = torch.cumsum(self._probs_G[children] / p_parent, 0).float()
            u_N = torch.rand(fires_NG.shape[0], generator=generator)
            pick_N = torch.searchsorted(edges_C, u_N, right=True)  # len(children) = none
            parent_N = fires_NG[:, parent]
            for slot, child in enumerate(children):
                fires_NG[:, child] = parent_N & (pick_N == slot)

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


def hierarchy_order(groups: list[list[int]], n_features: int,
                    probs_G: torch.Tensor) -> list[tuple[int, list[int]]]:
    """Check hierarchy groups and return (parent, children) pairs, parents before their children.

    Raises ValueError for out-of-range indices, a feature that is a child twice, a cycle, or
    children whose rates sum to more than their parent's.
    """
    parent_of: dict[int, int] = {}
    pairs: list[tuple[int, list[int]]] = []
    for i, group in enumerate(groups):
        _require(len(group) >= 2, f"hierarchy[{i}] must be [parent, child, ...], got {group}")
        for f in group:
            _require(isinstance(f, int) and 0 <= f < n_features,
                     f"hierarchy[{i}] has feature {f!r} outside 0..{n_features - 1}")
        parent, children = group[0], list(group[1:])
        _require(len(set(group)) == len(group), f"hierarchy[{i}] repeats a feature: {group}")
        for c in children:
            _require(c not in parent_of, f"feature {c} is a child in two hierarchy groups; a "
                     "feature has at most one parent")
            parent_of[c] = parent
        total = float(probs_G[children].sum())
        _require(total <= float(probs_G[parent]) + _PROBABILITY_TOL,
                 f"hierarchy[{i}]: children's firing probabilities sum to {total:.4g}, more than "
                 f"parent {parent}'s {float(probs_G[parent]):.4g}; children fire only with their "
                 "parent, so lower the children's rates or raise the parent's")
        pairs.append((parent, children))

    def depth(f: int, seen: frozenset[int] = frozenset()) -> int:
        _require(f not in seen, f"the hierarchy has a cycle through feature {f}")
        return 0 if f not in parent_of else 1 + depth(parent_of[f], seen | {f})

    return sorted(pairs, key=lambda pair: depth(pair[0]))


def batch_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends only on (seed, index), well mixed by SeedSequence."""
    _require(seed >= 0 and index >= 0, f"seed and index must be >= 0, got {seed}, {index}")
    high, low = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)


def _make_features(n_features: int, d_model: int, seed: int,
                   orthogonalise: bool = False) -> torch.Tensor:
    """Orthonormal rows when g <= d (QR of a Gaussian matrix), else random unit rows, spread
    apart by `orthogonalise_directions` if asked."""
    generator = torch.Generator().manual_seed(batch_seed(seed, _FEATURE_STREAM))
    gaussian_DG = torch.randn(d_model, n_features, generator=generator, dtype=torch.float64)
    if n_features <= d_model:
        q_DG, _ = torch.linalg.qr(gaussian_DG)
        return q_DG.T.contiguous().float()
    rows_GD = gaussian_DG.T
    rows_GD = rows_GD / rows_GD.norm(dim=1, keepdim=True)
    if orthogonalise:
        rows_GD = orthogonalise_directions(rows_GD)
    return rows_GD.contiguous().float()


def orthogonalise_directions(rows_GD: torch.Tensor, steps: int = _ORTHOGONALISE_STEPS,
                             lr: float = _ORTHOGONALISE_LR) -> torch.Tensor:
    """Unit rows with overlaps made as small as possible: Adam on the mean of cos(f_i, f_j)^4
    over pairs i ≠ j (the fourth power weights the largest overlaps most), rows renormalised
    after every step. Deterministic (float64, no randomness)."""
    rows = torch.nn.Parameter(rows_GD.double().clone())
    optimiser = torch.optim.Adam([rows], lr=lr)
    off_diagonal_GG = ~torch.eye(rows.shape[0], dtype=torch.bool)
    for _ in range(steps):
        unit = rows / rows.norm(dim=1, keepdim=True)
        loss = (unit @ unit.T)[off_diagonal_GG].pow(4).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            rows.div_(rows.norm(dim=1, keepdim=True))
    return rows.detach()


def _make_bias(d_model: int, norm: float, seed: int) -> torch.Tensor:
    """A fixed vector of the given norm in a random direction (its own random stream)."""
    generator = torch.Generator().manual_seed(batch_seed(seed, _BIAS_STREAM))
    direction_D = torch.randn(d_model, generator=generator, dtype=torch.float64)
    return (norm * direction_D / direction_D.norm()).float()


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
