"""Board-game metrics (Karvonen et al. 2024): per-cell F1 of a latent used as a classifier,
coverage (ours and the reference code's denominator) and board-reconstruction micro-F1.

A latent f "fires at t" where f > t·m_f (m_f its maximum on the training games). For a cell φ
(``mine@d4``, ``N@f3``, ``pin``) over P positions:

- F1(f, t, φ) = 2·TP / (#fired + #positives), TP = #positions where f fires and φ holds.
- **coverage** (ours) = max_t mean over cells *true at least once* of max_f F1.
- **coverage_paper** = max_t Σ_cells max_f F1 / D, where D is the reference code's cell count
  (the one-hot size minus a masked class): cells never true count as 0 and the denominator
  does not shrink, so a property with impossible cells cannot reach 1.
- **reconstruction micro-F1** = 2·TP / (#predicted + #true) over all (position, cell) pairs.
"""

from __future__ import annotations

from torch import Tensor


def cell_f1(tp_MC: Tensor, fired_M: Tensor, positives_C: Tensor) -> Tensor:
    """``(M, C)`` F1 of every (latent, cell) pair: 2·TP / (#fired + #positives) (0 when both
    are 0)."""
    return 2 * tp_MC / (fired_M[:, None] + positives_C[None, :]).clamp_min(1)


def coverage(best_f1_C: Tensor, scored_C: Tensor) -> float:
    """Mean best-latent F1 over the cells in ``scored_C`` (saelab: cells true at least once);
    0 when no cell is scored."""
    return float(best_f1_C[scored_C].mean()) if bool(scored_C.any()) else 0.0


def coverage_paper(best_f1_C: Tensor, denominator: int) -> float:
    """Sum of best-latent F1 over all cells / the reference code's cell count (never-true cells
    have F1 0 and still count)."""
    return float(best_f1_C.sum()) / max(1, denominator)


def micro_f1(tp: float, predicted: float, truth: float) -> float:
    """2·TP / (#predicted + #true) over all (position, cell) pairs."""
    return 2 * tp / max(1.0, predicted + truth)

