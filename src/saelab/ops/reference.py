"""Dense reference implementations of the sparse ops (for tests and benchmarks).

These build the full B×M matrices, exactly as peer libraries do; they define the semantics the
sparse path must reproduce.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dense_preacts(x_BD: Tensor, W_enc_DM: Tensor, b_enc_M: Tensor, b_dec_D: Tensor) -> Tensor:
    """(B, M) pre-activations ``(x − b_dec) @ W_enc + b_enc``."""
    return (x_BD - b_dec_D) @ W_enc_DM + b_enc_M


def dense_topk(pre_BM: Tensor, k: int) -> Tensor:
    """(B, M) codes: ReLU of each row's k largest pre-activations, zeros elsewhere."""
    vals_BK, idx_BK = pre_BM.topk(k, dim=1)
    return torch.zeros_like(pre_BM).scatter(1, idx_BK, torch.relu(vals_BK))


def dense_batch_topk(pre_BM: Tensor, k: int) -> Tensor:
    """(B, M) codes: the B·k largest ReLU'd pre-activations of the whole batch."""
    acts_flat = torch.relu(pre_BM).flatten()
    vals_N, idx_N = acts_flat.topk(min(k * pre_BM.shape[0], acts_flat.numel()))
    return torch.zeros_like(acts_flat).scatter(0, idx_N, vals_N).view_as(pre_BM)


def dense_aux_topk(pre_BM: Tensor, dead_mask_M: Tensor, k_aux: int) -> Tensor:
    """(B, M) AuxK codes: ReLU of each row's top-k_aux pre-activations among dead latents."""
    k_aux = min(k_aux, int(dead_mask_M.sum()))
    masked_BM = pre_BM.masked_fill(~dead_mask_M, float("-inf"))
    vals_BK, idx_BK = masked_BM.topk(k_aux, dim=1)
    return torch.zeros_like(pre_BM).scatter(1, idx_BK, torch.relu(vals_BK))


def dense_threshold(pre_BM: Tensor, threshold: float | Tensor) -> Tensor:
    """(B, M) JumpReLU codes: pre-activations above max(threshold, 0), zeros elsewhere."""
    thr = threshold.clamp_min(0) if isinstance(threshold, Tensor) else max(threshold, 0.0)
    return pre_BM * (pre_BM > thr)
