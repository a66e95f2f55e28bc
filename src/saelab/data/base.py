"""What the trainer needs from any activation source."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


class DataError(ValueError):
    """Activation data is unusable (wrong width, NaN/inf, corrupt or missing file)."""


@runtime_checkable
class ActivationSource(Protocol):
    """A stream of activation batches.

    ``batches(batch_size, start_batch)`` must be deterministic: batch i is the same whether the
    stream starts at 0 or resumes at i. That is what makes a resumed run bit-identical.
    """

    @property
    def d_in(self) -> int: ...

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]: ...

    def sample(self, n: int) -> Tensor:
        """Up to n rows for initialisation (geometric median, input scale)."""
        ...


def batch_schedule(n_rows: int, batch_size: int, start_batch: int = 0
                   ) -> Iterator[tuple[int, int, int]]:
    """(epoch, lo, hi) for batches start_batch, start_batch + 1, … over positions of an epoch's
    row order. Each epoch drops its ragged tail so every batch has ``batch_size`` rows, and
    batch i depends on i alone — the property exact resume needs."""
    per_epoch = n_rows // batch_size
    i = start_batch
    while True:
        epoch, pos = divmod(i, per_epoch)
        yield epoch, pos * batch_size, (pos + 1) * batch_size
        i += 1


def check_finite(batch: Tensor, where: str) -> None:
    """Raise DataError if a batch has NaN or infinite values, naming where."""
    if not torch.isfinite(batch).all():
        bad = (~torch.isfinite(batch)).nonzero()
        row, col = (int(v) for v in bad[0])
        n_bad = int(bad.shape[0])
        raise DataError(
            f"{where}: {n_bad} NaN/infinite value(s), first at row {row}, column {col}; "
            "clean the activations (or filter those rows) before training"
        )


#: a row whose norm exceeds this multiple of the median row norm is an extreme outlier
OUTLIER_NORM_MULTIPLE = 1000.0


def outlier_warning(norms_N: np.ndarray, where: str,
                    multiple: float = OUTLIER_NORM_MULTIPLE) -> str | None:
    """A message naming how many rows have norms above ``multiple`` × the median, and their
    norms; None when there are none."""
    if norms_N.size == 0:
        return None
    median = float(np.median(norms_N))
    limit = multiple * max(median, float(np.finfo(np.float32).tiny))
    rows = np.flatnonzero(norms_N > limit)
    if rows.size == 0:
        return None
    worst = rows[np.argsort(-norms_N[rows])][:5]
    shown = ", ".join(f"row {int(r)}: {norms_N[r]:.3g}" for r in worst)
    return (f"{where}: {rows.size} row(s) have norms over {multiple:g}× the median row norm "
            f"({median:.3g}): {shown}{', ...' if rows.size > 5 else ''}; such rows dominate the "
            "input scale and the loss — remove them (e.g. attention-sink tokens) before training")


def warn_about_outliers(norms_N: np.ndarray, where: str) -> None:
    message = outlier_warning(norms_N, where)
    if message:
        warnings.warn(message, stacklevel=3)
