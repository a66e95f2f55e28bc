"""Scores of feature explanations (formulas in docs/metrics.md, "Explanation scores").

All take plain Python sequences; a score that is undefined for the input (one class only, a
constant prediction) is NaN, never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass
class BinaryScores:
    """Confusion-matrix scores of a yes/no judge (detection, fuzzing)."""

    n: int
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: undefined (NaN) scores become None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def binary_scores(truth: Sequence[int], predicted: Sequence[int]) -> BinaryScores:
    """accuracy = (TP+TN)/n; balanced accuracy = (TPR + TNR)/2; precision = TP/(TP+FP);
    recall = TPR = TP/(TP+FN); F1 = 2·P·R/(P+R). NaN where a denominator is 0."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} labels but {len(predicted)} predictions")
    tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t and p)
    tn = sum(1 for t, p in zip(truth, predicted, strict=True) if not t and not p)
    fp = sum(1 for t, p in zip(truth, predicted, strict=True) if not t and p)
    fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t and not p)
    n = len(truth)
    recall = _ratio(tp, tp + fn)
    tnr = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    f1 = _ratio(2 * precision * recall, precision + recall) if not (
        math.isnan(precision) or math.isnan(recall)) else math.nan
    return BinaryScores(n, _ratio(tp + tn, n), (recall + tnr) / 2, precision, recall, f1)


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative),
    ties counted 1/2 (the Mann-Whitney U statistic / (n_pos·n_neg)). NaN if a side is empty."""
    if not positive or not negative:
        return math.nan
    ranked = sorted([(s, 1) for s in positive] + [(s, 0) for s in negative])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation r = cov(x, y) / (σx·σy); NaN when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} predictions but {len(y)} true values")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
