"""Compare learned decoder directions with reference directions (true features or another SAE).

Directions are rows: learned_KD is an SAE's decoder (K latents × D), reference_GD the G
ground-truth features or a second decoder. Rows are normalised internally, so only directions
matter; a zero row has cosine 0 with everything. By default similarity is |cos|, because a
direction and its negation span the same feature for signed codes and OSAE/Fel et al. match on
|cos|; pass signed=True to require the sign to agree as well. See docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

DEFAULT_RECOVERY_THRESHOLD = 0.9


@dataclass(frozen=True)
class DirectionMatch:
    """A one-to-one (Hungarian) matching of learned rows to reference rows.

    Attributes:
        learned_index_L: matched learned row of each pair (L = min(K, G) pairs).
        reference_index_L: matched reference row of each pair, ascending.
        similarity_L: |cos| (or signed cos) of each matched pair, float64.
        n_learned: K, rows of the learned matrix compared.
        n_reference: G, rows of the reference matrix compared.
    """

    learned_index_L: torch.Tensor
    reference_index_L: torch.Tensor
    similarity_L: torch.Tensor
    n_learned: int
    n_reference: int


def match_directions(
    learned_KD: torch.Tensor, reference_GD: torch.Tensor, signed: bool = False
) -> DirectionMatch:
    """One-to-one matching maximising the summed similarity (scipy's linear_sum_assignment).

    With K ≠ G, min(K, G) pairs are matched and the surplus rows stay unmatched. Cost is
    O(max(K, G)³) time and a dense K×G matrix, fine up to a few thousand rows.
    """
    similarity_KG = cosine_similarity_matrix(learned_KD, reference_GD, signed=signed)
    learned_idx, reference_idx = linear_sum_assignment(
        similarity_KG.double().numpy(), maximize=True
    )
    learned_L = torch.as_tensor(learned_idx, dtype=torch.int64)
    reference_L = torch.as_tensor(reference_idx, dtype=torch.int64)
    order_L = torch.argsort(reference_L)
    learned_L, reference_L = learned_L[order_L], reference_L[order_L]
    return DirectionMatch(
        learned_index_L=learned_L,
        reference_index_L=reference_L,
        similarity_L=similarity_KG[learned_L, reference_L].double(),
        n_learned=similarity_KG.shape[0],
        n_reference=similarity_KG.shape[1],
    )


def stability(
    learned_KD: torch.Tensor,
    reference_GD: torch.Tensor,
    prefix: int | None = None,
    signed: bool = False,
) -> float:
    """Stab = (1/G) Σ_{matched pairs} sim(d_μ(j), r_j): the mean matched similarity per reference row.

    Reference rows left unmatched (K < G) count as 0, so an SAE too small to cover every true
    feature is penalised; with K = G this is OSAE's max_P (1/K) tr(Dᵀ P D′). Not symmetric when
    K ≠ G: the reference sets the denominator. `prefix` keeps only the first p rows of both.
    """
    match = match_directions(*_truncate(learned_KD, reference_GD, prefix), signed=signed)
    return stability_of(match)


def orderedness(
    learned_KD: torch.Tensor,
    reference_GD: torch.Tensor,
    prefix: int | None = None,
    signed: bool = False,
) -> float:
    """Ord = Spearman correlation between reference index j and matched learned index μ(j).

    Over the L matched pairs, both indices are replaced by their ranks among the matched pairs
    and Ord = 1 − 6 Σ_j (rank j − rank μ(j))² / (L(L² − 1)). When K = G the ranks are the indices
    themselves and this is OSAE's formula. 1 = same order, −1 = reversed. `prefix` as in stability.
    """
    match = match_directions(*_truncate(learned_KD, reference_GD, prefix), signed=signed)
    return orderedness_of(match)


def recovered_share(
    learned_KD: torch.Tensor,
    reference_GD: torch.Tensor,
    threshold: float = DEFAULT_RECOVERY_THRESHOLD,
    signed: bool = False,
) -> float:
    """Share of reference rows whose Hungarian-matched similarity exceeds `threshold`.

    Uses the same one-to-one match as stability, so one latent cannot recover two features.
    """
    return recovered_share_of(match_directions(learned_KD, reference_GD, signed=signed), threshold)


def mean_max_cosine(
    learned_KD: torch.Tensor,
    reference_GD: torch.Tensor,
    signed: bool = False,
    chunk_size: int = 4096,
) -> float:
    """MMCS = (1/G) Σ_j max_k sim(d_k, r_j), with no one-to-one constraint (for comparison).

    One latent may be the best match of many reference rows, so MMCS >= Stab.
    """
    learned_unit_KD, reference_unit_GD = _unit_pair(learned_KD, reference_GD)
    total = 0.0
    for start in range(0, reference_unit_GD.shape[0], _positive(chunk_size, "chunk_size")):
        chunk_CD = reference_unit_GD[start : start + chunk_size]
        similarity_CK = _similarity(chunk_CD @ learned_unit_KD.T, signed)
        total += float(similarity_CK.max(dim=1).values.double().sum())
    return total / reference_unit_GD.shape[0]


def decoder_pairwise_cosine(decoder_KD: torch.Tensor, chunk_size: int = 1024) -> float:
    """c_dec = (1 / C(K, 2)) Σ_{i<j} |cos(d_i, d_j)|, Chanin & Garriga-Alonso's L0 proxy.

    Computed in row chunks (chunk_size × K at a time), never as a full K×K matrix.
    """
    unit_KD = _unit_rows(_as_rows(decoder_KD, "decoder"))
    k = unit_KD.shape[0]
    if k < 2:
        raise ValueError(f"decoder_pairwise_cosine needs at least 2 rows, got {k}")
    total, diagonal = 0.0, 0.0
    for start in range(0, k, _positive(chunk_size, "chunk_size")):
        abs_cos_CK = (unit_KD[start : start + chunk_size] @ unit_KD.T).abs()
        total += float(abs_cos_CK.double().sum())
        diagonal += float(abs_cos_CK.diagonal(offset=start).double().sum())
    # The full |cos| matrix is symmetric, so the off-diagonal sum is twice the i<j sum.
    return (total - diagonal) / (k * (k - 1))


def matching_metrics(
    learned_KD: torch.Tensor,
    reference_GD: torch.Tensor,
    threshold: float = DEFAULT_RECOVERY_THRESHOLD,
    signed: bool = False,
) -> dict[str, float]:
    """Stab, Ord, recovered share and MMCS from one shared matching, as a dict."""
    match = match_directions(learned_KD, reference_GD, signed=signed)
    return {
        "stability": stability_of(match),
        "orderedness": orderedness_of(match) if len(match.similarity_L) >= 2 else float("nan"),
        "recovered_share": recovered_share_of(match, threshold),
        "mean_max_cosine": mean_max_cosine(learned_KD, reference_GD, signed=signed),
    }


def stability_of(match: DirectionMatch) -> float:
    """Stab of an existing match: Σ matched similarity / n_reference."""
    return float(match.similarity_L.sum()) / match.n_reference


def orderedness_of(match: DirectionMatch) -> float:
    """Ord of an existing match (Spearman on the ranks of the matched pairs)."""
    n_pairs = len(match.reference_index_L)
    if n_pairs < 2:
        raise ValueError(f"orderedness needs at least 2 matched pairs, got {n_pairs}")
    rank_diff_L = _ranks(match.reference_index_L) - _ranks(match.learned_index_L)
    return 1.0 - 6.0 * float(rank_diff_L.pow(2).sum()) / (n_pairs * (n_pairs**2 - 1))


def recovered_share_of(match: DirectionMatch, threshold: float) -> float:
    """Share of reference rows whose matched similarity is > threshold."""
    return float((match.similarity_L > threshold).sum()) / match.n_reference


def cosine_similarity_matrix(
    learned_KD: torch.Tensor, reference_GD: torch.Tensor, signed: bool = False
) -> torch.Tensor:
    """K×G matrix of cos(d_k, r_g) (absolute values unless signed), float32 on the CPU."""
    learned_unit_KD, reference_unit_GD = _unit_pair(learned_KD, reference_GD)
    return _similarity(learned_unit_KD @ reference_unit_GD.T, signed)


def _truncate(
    learned_KD: torch.Tensor, reference_GD: torch.Tensor, prefix: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if prefix is None:
        return learned_KD, reference_GD
    return learned_KD[: _positive(prefix, "prefix")], reference_GD[:prefix]


def _unit_pair(
    learned_KD: torch.Tensor, reference_GD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    learned_KD = _as_rows(learned_KD, "learned")
    reference_GD = _as_rows(reference_GD, "reference")
    if learned_KD.shape[1] != reference_GD.shape[1]:
        raise ValueError(
            f"learned rows have {learned_KD.shape[1]} dims but reference rows have "
            f"{reference_GD.shape[1]}; pass both as (n_directions, d_model) — e.g. W_dec.T if "
            "your decoder is stored (d_model, n_latents)"
        )
    return _unit_rows(learned_KD), _unit_rows(reference_GD)


def _as_rows(directions: torch.Tensor, name: str) -> torch.Tensor:
    if directions.ndim != 2 or directions.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D (n_directions, d_model) tensor, "
            f"got shape {tuple(directions.shape)}"
        )
    if not bool(torch.isfinite(directions).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return directions.detach().float().cpu()


def _unit_rows(rows_KD: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows_KD, dim=1)


def _similarity(cos: torch.Tensor, signed: bool) -> torch.Tensor:
    # Clamp float32 rounding (|cos| of two unit rows can come out as 1 + 6e-8).
    cos = cos.clamp(-1.0, 1.0)
    return cos if signed else cos.abs()


def _ranks(values_L: torch.Tensor) -> torch.Tensor:
    """0-based ranks of distinct values."""
    return torch.argsort(torch.argsort(values_L)).double()


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value
