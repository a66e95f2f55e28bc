"""Which token positions count: special tokens out, optionally high-norm outliers out.

BOS (and EOS/CLS/SEP/padding) positions carry activations unlike any other token — often
attention sinks with norms tens of times the median — so they are left out of training and
metrics by default. ``max_norm_multiple`` additionally drops any activation whose norm exceeds
that multiple of the median norm of its batch (sinks that sit on ordinary tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def position_mask(tokens_BS: Tensor, exclude_ids: Sequence[int]) -> Tensor:
    """Bool (B × S): True where the token is not one of ``exclude_ids``."""
    if not exclude_ids:
        return torch.ones_like(tokens_BS, dtype=torch.bool)
    excluded = torch.tensor(list(exclude_ids), dtype=tokens_BS.dtype, device=tokens_BS.device)
    return ~torch.isin(tokens_BS, excluded)


def norm_outlier_mask(acts_ND: Tensor, max_norm_multiple: float) -> Tensor:
    """Bool (N): True where ‖x‖ ≤ max_norm_multiple × median ‖x‖ over the N rows (0 = all)."""
    if max_norm_multiple <= 0 or acts_ND.shape[0] == 0:
        return torch.ones(acts_ND.shape[0], dtype=torch.bool, device=acts_ND.device)
    norms_N = acts_ND.float().norm(dim=-1)
    return norms_N <= max_norm_multiple * norms_N.median()


def kept_rows(acts_BSD: Tensor, tokens_BS: Tensor, exclude_ids: Sequence[int],
              max_norm_multiple: float = 0.0) -> tuple[Tensor, Tensor]:
    """The activations at counted positions, flattened, and their (sequence, position) index.

    Returns ``acts_ND`` and ``index_N2`` (int64 columns: row of the batch, position).
    """
    keep_BS = position_mask(tokens_BS, exclude_ids)
    index_N2 = keep_BS.nonzero()
    acts_ND = acts_BSD[keep_BS]
    outliers_ok_N = norm_outlier_mask(acts_ND, max_norm_multiple)
    if not bool(outliers_ok_N.all()):
        acts_ND, index_N2 = acts_ND[outliers_ok_N], index_N2[outliers_ok_N]
    return acts_ND, index_N2
