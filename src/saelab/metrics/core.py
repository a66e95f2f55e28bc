"""Reconstruction and sparsity metrics of an SAE, accumulated exactly over any batching.

Notation: x = activations (N×D), x̂ = reconstructions (N×D), f = codes (N×M), E = mean over all
included tokens. Every metric is defined once, in `CoreMetricsAccumulator.compute`, from float64
running sums, so one batch and many batches give the same numbers. See docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

DEFAULT_DENSE_THRESHOLD = 0.1


@dataclass(frozen=True)
class CoreMetrics:
    """Core SAE metrics over N tokens (see docs/metrics.md for the choices behind each).

    Attributes:
        n_tokens: N, the number of tokens included.
        l0: E_t #{i : f_i ≠ 0}, nonzero (not positive) codes per token.
        mse: E_t ‖x − x̂‖² / D, squared error per element.
        explained_variance: 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²), both means over all tokens.
        cosine_similarity: E_t cos(x, x̂) over tokens with x ≠ 0.
        shrinkage: γ = E‖x̂‖² / E[x·x̂]; γ < 1 means the SAE shrinks its reconstructions.
        l2_ratio: E_t ‖x̂‖ / ‖x‖ over tokens with x ≠ 0.
        dead_share: share of latents with firing density ρ_i = 0.
        dense_share: share of latents with ρ_i > dense_threshold.
        dense_threshold: the density above which a latent counts as dense.
        latent_density_M: ρ_i = #{t : f_ti ≠ 0} / N for every latent (float64).
    """

    n_tokens: int
    l0: float
    mse: float
    explained_variance: float
    cosine_similarity: float
    shrinkage: float
    l2_ratio: float
    dead_share: float
    dense_share: float
    dense_threshold: float
    latent_density_M: torch.Tensor = field(repr=False)

    def to_dict(self, include_density: bool = False) -> dict[str, float | int | list[float]]:
        """Scalar metrics as a JSON-ready dict; the per-latent density only if asked for."""
        scalars: dict[str, float | int | list[float]] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "latent_density_M"
        }
        if include_density:
            scalars["latent_density"] = self.latent_density_M.tolist()
        return scalars


class CoreMetricsAccumulator:
    """Streams (acts, recon, codes) batches and computes CoreMetrics over all of them.

    All sums are kept in float64 and the data variance is merged across batches with Chan's
    parallel update, so results do not depend on how tokens are split into batches.
    """

    def __init__(self, n_latents: int, dense_threshold: float = DEFAULT_DENSE_THRESHOLD) -> None:
        if n_latents < 1:
            raise ValueError(f"n_latents must be >= 1, got {n_latents}")
        if not 0.0 <= dense_threshold <= 1.0:
            raise ValueError(f"dense_threshold must be in [0, 1], got {dense_threshold}")
        self.n_latents = n_latents
        self.dense_threshold = dense_threshold
        self._n_tokens = 0
        self._n_nonzero_tokens = 0  # tokens with x ≠ 0, the ones cos and l2_ratio are defined on
        self._mean_D: torch.Tensor | None = None  # running mean of x
        self._sum_sq_dev = 0.0  # Σ‖x − mean‖² over all tokens so far
        self._sum_sq_err = 0.0  # Σ‖x − x̂‖²
        self._sum_sq_recon = 0.0  # Σ‖x̂‖²
        self._sum_dot = 0.0  # Σ x·x̂
        self._sum_cos = 0.0  # Σ cos(x, x̂) over tokens with x ≠ 0
        self._sum_l2_ratio = 0.0  # Σ ‖x̂‖/‖x‖ over tokens with x ≠ 0
        self._fire_counts_M = torch.zeros(n_latents, dtype=torch.int64)
        self._d_model: int | None = None

    def update(
        self,
        acts_ND: torch.Tensor,
        recon_ND: torch.Tensor,
        codes_NM: torch.Tensor,
        mask_N: torch.Tensor | None = None,
    ) -> None:
        """Add a batch; `mask_N` (bool, optional) selects the tokens to include."""
        self._check_shapes(acts_ND, recon_ND, codes_NM, mask_N)
        if mask_N is not None:
            acts_ND, recon_ND, codes_NM = acts_ND[mask_N], recon_ND[mask_N], codes_NM[mask_N]
        _check_finite(acts=acts_ND, recon=recon_ND, codes=codes_NM)
        n = acts_ND.shape[0]
        if n == 0:
            return
        x_ND, xhat_ND = _as_float64(acts_ND), _as_float64(recon_ND)
        self._merge_variance(x_ND)
        self._sum_sq_err += float((x_ND - xhat_ND).pow(2).sum())
        self._sum_sq_recon += float(xhat_ND.pow(2).sum())
        self._sum_dot += float((x_ND * xhat_ND).sum())
        self._add_per_token_ratios(x_ND, xhat_ND)
        self._fire_counts_M += (codes_NM.detach() != 0).sum(dim=0).to(torch.int64).cpu()
        self._n_tokens += n

    def compute(self) -> CoreMetrics:
        """The metrics over every token added so far."""
        if self._n_tokens == 0:
            raise ValueError("no tokens accumulated; call update() with at least one token first")
        n = self._n_tokens
        density_M = self._fire_counts_M.to(torch.float64) / n
        return CoreMetrics(
            n_tokens=n,
            l0=float(self._fire_counts_M.sum()) / n,
            mse=self._sum_sq_err / (n * self._require_d_model()),
            explained_variance=_explained_variance(self._sum_sq_err, self._sum_sq_dev),
            cosine_similarity=_safe_mean(self._sum_cos, self._n_nonzero_tokens),
            shrinkage=_safe_ratio(self._sum_sq_recon, self._sum_dot),
            l2_ratio=_safe_mean(self._sum_l2_ratio, self._n_nonzero_tokens),
            dead_share=float((density_M == 0).double().mean()),
            dense_share=float((density_M > self.dense_threshold).double().mean()),
            dense_threshold=self.dense_threshold,
            latent_density_M=density_M,
        )

    def _merge_variance(self, x_ND: torch.Tensor) -> None:
        """Chan et al.'s pairwise update of the running mean and Σ‖x − mean‖²."""
        n_old, n_new = self._n_tokens, x_ND.shape[0]
        batch_mean_D = x_ND.mean(dim=0)
        batch_sq_dev = float((x_ND - batch_mean_D).pow(2).sum())
        if self._mean_D is None:
            self._mean_D, self._sum_sq_dev = batch_mean_D, batch_sq_dev
            return
        delta_D = batch_mean_D - self._mean_D
        n_total = n_old + n_new
        self._sum_sq_dev += batch_sq_dev + float(delta_D.pow(2).sum()) * n_old * n_new / n_total
        self._mean_D = self._mean_D + delta_D * (n_new / n_total)

    def _add_per_token_ratios(self, x_ND: torch.Tensor, xhat_ND: torch.Tensor) -> None:
        x_norm_N = x_ND.norm(dim=1)
        xhat_norm_N = xhat_ND.norm(dim=1)
        has_direction_N = x_norm_N > 0  # cos and ‖x̂‖/‖x‖ are undefined for x = 0
        x_norm_N, xhat_norm_N = x_norm_N[has_direction_N], xhat_norm_N[has_direction_N]
        dots_N = (x_ND[has_direction_N] * xhat_ND[has_direction_N]).sum(dim=1)
        # x̂ = 0 gives cos = 0: a reconstruction that misses the token entirely.
        cos_N = dots_N / (x_norm_N * xhat_norm_N).clamp(min=torch.finfo(torch.float64).tiny)
        self._sum_cos += float(cos_N.sum())
        self._sum_l2_ratio += float((xhat_norm_N / x_norm_N).sum())
        self._n_nonzero_tokens += int(has_direction_N.sum())

    def _check_shapes(
        self,
        acts_ND: torch.Tensor,
        recon_ND: torch.Tensor,
        codes_NM: torch.Tensor,
        mask_N: torch.Tensor | None,
    ) -> None:
        if acts_ND.ndim != 2 or recon_ND.shape != acts_ND.shape:
            raise ValueError(
                f"acts and recon must both be (tokens, d_model), got {tuple(acts_ND.shape)} "
                f"and {tuple(recon_ND.shape)}; flatten batch and sequence dims first"
            )
        expected_codes = (acts_ND.shape[0], self.n_latents)
        if tuple(codes_NM.shape) != expected_codes:
            raise ValueError(
                f"codes must have shape (tokens, n_latents) = {expected_codes}, "
                f"got {tuple(codes_NM.shape)}"
            )
        if self._d_model is not None and acts_ND.shape[1] != self._d_model:
            raise ValueError(
                f"d_model changed between batches: {self._d_model} then {acts_ND.shape[1]}"
            )
        self._d_model = acts_ND.shape[1]
        if mask_N is not None and (mask_N.dtype != torch.bool or mask_N.shape != acts_ND.shape[:1]):
            raise ValueError(
                f"mask must be a bool tensor of shape ({acts_ND.shape[0]},), "
                f"got {mask_N.dtype} {tuple(mask_N.shape)}"
            )

    def _require_d_model(self) -> int:
        assert self._d_model is not None  # set by the first update, which compute() requires
        return self._d_model


def core_metrics(
    acts_ND: torch.Tensor,
    recon_ND: torch.Tensor,
    codes_NM: torch.Tensor,
    mask_N: torch.Tensor | None = None,
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD,
) -> CoreMetrics:
    """CoreMetrics of one set of tokens (a one-batch CoreMetricsAccumulator)."""
    accumulator = CoreMetricsAccumulator(codes_NM.shape[-1], dense_threshold=dense_threshold)
    accumulator.update(acts_ND, recon_ND, codes_NM, mask_N)
    return accumulator.compute()


def _check_finite(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{name} contains NaN or inf; check the model and its inputs "
                "(e.g. overflow in half precision) before computing metrics"
            )


def _as_float64(tensor: torch.Tensor) -> torch.Tensor:
    # MPS has no float64, so those batches are summed on the CPU.
    if tensor.device.type == "mps":
        tensor = tensor.cpu()
    return tensor.detach().to(torch.float64)


def explained_variance(acts_ND: torch.Tensor, recon_ND: torch.Tensor) -> float:
    """EV of one set of tokens, the same formula as CoreMetrics.explained_variance (for logs)."""
    x_ND, xhat_ND = _as_float64(acts_ND), _as_float64(recon_ND)
    sum_sq_dev = float((x_ND - x_ND.mean(dim=0)).pow(2).sum())
    return _explained_variance(float((x_ND - xhat_ND).pow(2).sum()), sum_sq_dev)


def _explained_variance(sum_sq_err: float, sum_sq_dev: float) -> float:
    """EV = 1 − Σ‖x − x̂‖² / Σ‖x − E x‖² (the N's cancel); NaN when the data has no variance."""
    if sum_sq_dev == 0.0:
        return float("nan")
    return 1.0 - sum_sq_err / sum_sq_dev


def _safe_ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0.0 else float("nan")


def _safe_mean(total: float, count: int) -> float:
    return total / count if count > 0 else float("nan")
