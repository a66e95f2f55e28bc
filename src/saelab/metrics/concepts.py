"""Concept-level metrics: absorption, k-sparse latent selection, the monosemanticity score,
concept-cone containment and alignment, AUC, and intervals over seeds.

Every function here is a pure formula on tensors or arrays; the evaluations in
``saelab.evals`` (absorption, sparse_probing, monosemanticity, concept_cones) collect the data
and call these. A value that the formula leaves undefined (a dead latent, a concept with no
positives) is NaN and comes with a reason (:class:`Undefined`); it is never replaced by a
number. docs/metrics.md ("Concept-level metrics") gives the formulas and where they differ
from SAEBench and the papers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NAN = float("nan")

# SAEBench's absorption constants (Chanin et al. first-letter task, D. Till's fraction metric)
ABSORPTION_MIN_SHARE = 0.4  # S/P (fraction) or proj/P (full) below this is no absorption
ABSORPTION_MIN_COSINE = 0.1  # absorbing latents of the fraction metric need cos ≥ this
FULL_ABSORPTION_MIN_COSINE = 0.025  # the absorbing latent of the full metric needs cos ≥ this
ABSORPTION_TOP_ABSORBERS = 3  # S sums this many largest projections
MAIN_OFF_THRESHOLD = 1e-8  # a main latent "stays off" below this activation


@dataclass(frozen=True)
class Undefined:
    """Why a metric is NaN for one item (latent, concept, letter)."""

    item: str
    reason: str


# ---------------------------------------------------------------------------- absorption


def absorption_fractions(acts_ND: Tensor, codes_NM: Tensor, W_dec_MD: Tensor, probe_D: Tensor,
                         main_latents: list[int]) -> Tensor:
    """Per-token absorption fraction (SAEBench's fraction metric) for tokens of one letter.

    With p = probe_D/‖probe_D‖, c_i = cos(p, d_i), proj_i = f_i·(d_i·p) (latent i's
    contribution to the reconstruction along p), P = x·p, M = Σ_{i∈main} proj_i and S = sum of
    the ``ABSORPTION_TOP_ABSORBERS`` largest proj_i over non-main latents with
    c_i ≥ ``ABSORPTION_MIN_COSINE`` and proj_i > 0:

        fraction = 0                 if M ≥ P or S/P < 0.4
                 = 1                 if M ≤ 0
                 = a / (a + M)       otherwise, a = min(S, P − M), clipped to [0, 1].

    Returns ``(N,)`` float64. With unit-norm decoder rows proj_i = f_i·c_i as in SAEBench.
    """
    proj_NM, cos_M, P_N = _projections(acts_ND, codes_NM, W_dec_MD, probe_D)
    main = torch.zeros(cos_M.shape[0], dtype=torch.bool)
    main[main_latents] = True
    M_N = proj_NM[:, main].sum(1)
    eligible = (~main & (cos_M >= ABSORPTION_MIN_COSINE))[None, :] & (proj_NM > 0)
    candidates = torch.where(eligible, proj_NM, torch.zeros_like(proj_NM))
    top = min(ABSORPTION_TOP_ABSORBERS, candidates.shape[1])
    S_N = candidates.topk(top, dim=1).values.sum(1) if top else torch.zeros_like(P_N)
    share = torch.where(P_N != 0, S_N / torch.where(P_N != 0, P_N, torch.ones_like(P_N)),
                        torch.zeros_like(P_N))
    a = torch.minimum(S_N, P_N - M_N)
    partial = (a / (a + M_N).clamp_min(1e-12)).clamp(0, 1)
    out = torch.where(M_N <= 0, torch.ones_like(P_N), partial)
    return torch.where((M_N >= P_N) | (share < ABSORPTION_MIN_SHARE), torch.zeros_like(P_N), out)


def full_absorption(acts_ND: Tensor, codes_NM: Tensor, W_dec_MD: Tensor, probe_D: Tensor,
                    main_latents: list[int]) -> Tensor:
    """Per-token full absorption (SAEBench), ``(N,)`` bool: every main latent is below
    ``MAIN_OFF_THRESHOLD``, and the latent with the largest proj_i (over all latents) has
    c ≥ ``FULL_ABSORPTION_MIN_COSINE``, P ≥ 0 and proj/P ≥ ``ABSORPTION_MIN_SHARE``."""
    proj_NM, cos_M, P_N = _projections(acts_ND, codes_NM, W_dec_MD, probe_D)
    main_off = (codes_NM[:, main_latents].abs() < MAIN_OFF_THRESHOLD).all(1) if main_latents \
        else torch.ones_like(P_N, dtype=torch.bool)
    top_proj, top_latent = proj_NM.max(1)
    share = top_proj / torch.where(P_N > 0, P_N, torch.ones_like(P_N))
    return main_off & (cos_M[top_latent] >= FULL_ABSORPTION_MIN_COSINE) & (P_N > 0) & \
        (share >= ABSORPTION_MIN_SHARE)


def _projections(acts_ND: Tensor, codes_NM: Tensor, W_dec_MD: Tensor, probe_D: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
    p = probe_D.double() / probe_D.double().norm().clamp_min(1e-12)
    dec = W_dec_MD.double()
    along_M = dec @ p  # d_i · p
    cos_M = along_M / dec.norm(dim=1).clamp_min(1e-12)
    return codes_NM.double() * along_M[None, :], cos_M, acts_ND.double() @ p


# ---------------------------------------------------------------------------- latent selection


def mean_difference(features_NF: Tensor, labels_N: Tensor) -> Tensor:
    """``(F,)`` mean over positives minus mean over negatives of every feature; NaN for every
    feature when either class is empty."""
    labels = labels_N.bool()
    if not labels.any() or labels.all():
        return torch.full((features_NF.shape[1],), NAN, dtype=torch.float64)
    x = features_NF.double()
    return x[labels].mean(0) - x[~labels].mean(0)


def top_k_latents(features_NF: Tensor, labels_N: Tensor, k: int, signed: bool = False
                  ) -> list[int]:
    """The k-sparse probing rule: the k features with the largest |mean_pos − mean_neg| on the
    given (training) rows (SAEBench's rule), or the largest signed difference with ``signed``
    (features that fire *for* the class, used for absorption's main latents). Ties break by
    the lower index. Raises ValueError when a class is empty."""
    diff = mean_difference(features_NF, labels_N)
    if torch.isnan(diff).any():
        raise ValueError("k-sparse selection needs both positive and negative rows")
    score = diff if signed else diff.abs()
    order = sorted(range(score.shape[0]), key=lambda i: (-float(score[i]), i))
    return order[:min(k, len(order))]


# ---------------------------------------------------------------------------- monosemanticity


# the closed form's numerator loses about N·eps·(Σã)²/denominator to cancellation; above this
# ratio of (Σã)² to the pair sum, the unit is recomputed exactly from pairwise cosines
MS_EXACT_ABOVE = 1e6


def monosemanticity_scores(acts_NM: Tensor, embeddings_NE: Tensor) -> Tensor:
    """MS of Pach et al. for every unit (column) of ``acts_NM`` over N inputs.

    ã = (a − min_n a)/(max_n a − min_n a) per unit; s_nm = cos(E_n, E_m);

        MS_k = Σ_{n<m} ã_nk ã_mk s_nm / Σ_{n<m} ã_nk ã_mk.

    A weighted mean of cosines, so MS ∈ [−1, 1] whenever every ã ≥ 0 and every embedding has a
    direction. Computed without the N×N matrix: with unit rows ê_n, Σ_{n<m} ã_n ã_m s_nm =
    (‖Σ_n ã_n ê_n‖² − Σ_n ã_n²)/2, and the denominator as Σ_n ã_n·Σ_{m<n} ã_m (positive terms,
    no cancellation). Units where the closed form's subtraction would cancel (one input far
    above all others: (Σã)² > ``MS_EXACT_ABOVE`` × the pair sum) are recomputed from the pairwise
    cosines of the inputs they fire on. Returns ``(M,)`` float64; NaN where max = min (a dead or
    constant unit), an activation is not finite, or fewer than two inputs have ã > 0.
    :func:`monosemanticity_undefined` gives the reasons. Raises ValueError for an embedding
    that is zero or not finite (it has no direction: no cosine is defined).
    """
    if acts_NM.shape[0] != embeddings_NE.shape[0]:
        raise ValueError(f"{acts_NM.shape[0]} activation rows but {embeddings_NE.shape[0]} "
                         "embeddings: give one embedding per input")
    e = embeddings_NE.double()
    norms = e.norm(dim=1)
    bad = (~torch.isfinite(e).all(1) | (norms == 0)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the embeddings of inputs {bad[:10]} are zero or not finite, so no "
                         "cosine with them is defined (a zero row would push MS below -1); drop "
                         "those inputs or fix the embedder")
    e = e / norms[:, None]
    a = acts_NM.double()
    finite = torch.isfinite(a).all(0)
    a = torch.where(finite[None, :], a, torch.zeros_like(a))
    lo, hi = a.min(0).values, a.max(0).values
    span = hi - lo
    norm = (a - lo) / torch.where(span > 0, span, torch.ones_like(span))
    total = norm.sum(0)
    sum_sq = (norm * norm).sum(0)
    pairs = (norm * (norm.cumsum(0) - norm)).sum(0)  # Σ_{m<n} ã_m ã_n, all terms ≥ 0
    weighted_EM = e.T @ norm
    numerator = ((weighted_EM * weighted_EM).sum(0) - sum_sq) / 2
    defined = finite & (span > 0) & (pairs > 0)
    exact = (defined & (total * total > MS_EXACT_ABOVE * pairs)).nonzero().flatten().tolist()
    for k in exact:
        numerator[k] = _pair_sum(norm[:, k], e)
    ms = torch.where(defined, numerator / torch.where(defined, pairs, torch.ones_like(pairs)),
                     torch.full_like(pairs, NAN))
    outside = (ms.abs() > 1 + 1e-6).nonzero().flatten().tolist()
    if outside:  # a weighted mean of cosines cannot leave [-1, 1]: never report such a number
        raise ArithmeticError(f"monosemanticity of units {outside[:10]} is outside [-1, 1] "
                              "(numerical failure); please report it with the inputs")
    return ms


def _pair_sum(weights_N: Tensor, unit_NE: Tensor, chunk: int = 2048) -> float:
    """Σ_{n<m} w_n w_m cos(e_n, e_m) over the inputs with w > 0, summed pair by pair (no
    cancellation against the diagonal)."""
    keep = weights_N > 0
    w, e = weights_N[keep], unit_NE[keep]
    total = 0.0
    for i in range(0, w.shape[0], chunk):
        gram = e[i:i + chunk] @ e.T  # rows i.. against all
        rows = torch.arange(i, min(i + chunk, w.shape[0]))
        gram[torch.arange(len(rows)), rows] = 0.0  # drop n = m
        total += float((w[i:i + chunk, None] * gram * w[None, :]).sum())
    return total / 2


def monosemanticity_undefined(acts_NM: Tensor, names: list[str] | None = None
                              ) -> list[Undefined]:
    """The reason each NaN of :func:`monosemanticity_scores` is NaN."""
    a = acts_NM.double()
    finite = torch.isfinite(a).all(0)
    a = torch.where(finite[None, :], a, torch.zeros_like(a))
    span = a.max(0).values - a.min(0).values
    positive = ((a - a.min(0).values) > 0).sum(0)
    out = []
    for i in range(a.shape[1]):
        name = names[i] if names else str(i)
        if not finite[i]:
            out.append(Undefined(name, "non-finite activation (NaN or inf) on some input"))
        elif span[i] <= 0:
            dead = bool((a[:, i] == 0).all())
            out.append(Undefined(name, "dead: never fires on these inputs" if dead
                                 else "constant activation: min-max normalisation is 0/0"))
        elif positive[i] < 2:
            out.append(Undefined(name, "fires above its minimum on only one input: no pair "
                                       "to compare"))
    return out


# ---------------------------------------------------------------------------- concept cones


def best_cosine(concepts_KD: Tensor, atoms_MD: Tensor) -> tuple[Tensor, Tensor]:
    """Geometric alignment: for every concept direction w_k, max_j cos(w_k, d_j) and that j."""
    c = concepts_KD.double() / concepts_KD.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    d = atoms_MD.double() / atoms_MD.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (c @ d.T).max(1)


def cone_residual(concept_D: np.ndarray, atoms_MD: np.ndarray, s: int
                  ) -> tuple[float, list[int], np.ndarray]:
    """Containment residual of one concept direction in the cone of the top-s atoms:

        r = min_{λ ≥ 0} ‖ŵ − Σ_{j∈T_s} λ_j d̂_j‖ / ‖ŵ‖,   ŵ = w/‖w‖,

    T_s = the s atoms with the largest cos(w, d_j) (unit-normalised atoms), solved by
    non-negative least squares. r ∈ [0, 1]: 0 when ŵ lies in that cone, 1 when no atom has a
    positive cosine with it. Returns r, T_s and λ (weights of the unit atoms). NaN when w is
    zero or not finite."""
    from scipy.optimize import nnls

    w = np.asarray(concept_D, dtype=np.float64)
    norm = float(np.linalg.norm(w))
    if norm == 0 or not math.isfinite(norm):
        return NAN, [], np.zeros(0)
    w = w / norm
    d = np.asarray(atoms_MD, dtype=np.float64)
    d = d / np.clip(np.linalg.norm(d, axis=1, keepdims=True), 1e-12, None)
    cos = d @ w
    top = [int(j) for j in np.argsort(-cos, kind="stable")[:max(1, s)]]
    weights, residual = nnls(d[top].T, w)
    return float(residual), top, weights


# ---------------------------------------------------------------------------- scores


def auc(scores_N: Tensor | np.ndarray, labels_N: Tensor | np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties
    counting one half (the Mann–Whitney U statistic / (n_pos·n_neg)). NaN when either class is
    empty."""
    s = np.asarray(scores_N, dtype=np.float64).ravel()
    y = np.asarray(labels_N).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for lo, hi in zip(starts, ends, strict=True):
        ranks[order[lo:hi]] = (lo + 1 + hi) / 2
    return ranks


def binary_f1(predicted_N: Tensor, labels_N: Tensor) -> float:
    """F1 = 2·TP / (2·TP + FP + FN); NaN when there are no positives and no predictions."""
    p, y = predicted_N.bool(), labels_N.bool()
    denom = int(p.sum()) + int(y.sum())
    return NAN if denom == 0 else 2 * int((p & y).sum()) / denom


@dataclass(frozen=True)
class Interval:
    """Mean and a two-sided 95% Student-t interval over n values (NaNs left out); the half
    width is NaN with fewer than two values."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> Interval:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(NAN, NAN, 0)
        if v.size == 1:
            return cls(float(v[0]), NAN, 1)
        from scipy.special import stdtrit  # Student-t quantile (scipy.stats imports slowly)

        half = float(stdtrit(v.size - 1, 0.975) * v.std(ddof=1) / math.sqrt(v.size))
        return cls(float(v.mean()), half, int(v.size))

    def __str__(self) -> str:
        if not math.isfinite(self.mean):
            return "nan"
        return f"{self.mean:.3f}" + (f" ± {self.half_width:.3f}" if math.isfinite(self.half_width)
                                     else "")


def nan_mean(values: list[float] | np.ndarray | Tensor) -> float:
    """Mean over the finite values; NaN when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else NAN


def nan_std(values: list[float] | np.ndarray | Tensor) -> float:
    """Population standard deviation over the finite values; NaN when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std()) if v.size else NAN
