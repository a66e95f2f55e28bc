"""Differentiable sparse decode and sparse encoder pre-activations.

Forward and backward are O(nnz·D): nothing of size B×M (or B×K×D) is built. Weight gradients
are dense (M×D) tensors filled by one sorted embedding-bag pass. Codes that densely fill a
small block of latents (AuxK codes over the dead set) switch to small GEMMs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saelab.ops.codes import SparseCodes
from saelab.ops.kernels import block_support, rowwise_dots, segment_weighted_sum


class _BagDecode(torch.autograd.Function):
    """out[bag] = Σ_{n in bag} values[n] · W[idx[n]]; entries grouped by bag (CSR offsets)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, values_N: Tensor, W_MD: Tensor, idx_N: Tensor, offsets: Tensor, bag_N: Tensor
    ) -> Tensor:
        ctx.save_for_backward(values_N, W_MD, idx_N, bag_N)
        # Detached inputs select embedding_bag's cheaper forward-only kernel.
        return F.embedding_bag(
            idx_N,
            W_MD.detach(),
            offsets,
            mode="sum",
            per_sample_weights=values_N.detach(),
            include_last_offset=True,
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out_ND: Tensor) -> tuple[Tensor | None, ...]:
        values_N, W_MD, idx_N, bag_N = ctx.saved_tensors
        grad_out_ND = grad_out_ND.contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = rowwise_dots(grad_out_ND, bag_N, W_MD, idx_N)
        if ctx.needs_input_grad[1]:
            grad_W = segment_weighted_sum(grad_out_ND, bag_N, idx_N, values_N, W_MD.shape[0])
        return grad_values, grad_W, None, None, None


def sparse_decode(codes: SparseCodes, W_dec_MD: Tensor, b_dec_D: Tensor | None = None) -> Tensor:
    """Reconstruct ``codes @ W_dec (+ b_dec)`` → (B, D) in O(nnz·D).

    Differentiable with respect to ``codes.values``, ``W_dec_MD`` and ``b_dec_D``.
    """
    B, M = codes.n_rows, codes.n_latents
    values_N, rows_N = codes.values.to(W_dec_MD.dtype), codes.row_ids()
    if codes.nnz == 0:
        out_BD = values_N.new_zeros(B, W_dec_MD.shape[1])
    elif (support := block_support(codes.indices, B, M)) is not None:
        block_BU = values_N.new_zeros(B, support.latents_U.numel())
        block_BU = block_BU.index_put((rows_N, support.col_N), values_N, accumulate=True)
        out_BD = block_BU @ W_dec_MD.index_select(0, support.latents_U)
    else:
        out_BD = _BagDecode.apply(values_N, W_dec_MD, codes.indices, codes.offsets, rows_N)
    return out_BD if b_dec_D is None else out_BD + b_dec_D


def grouped_decode(codes: SparseCodes, W_dec_MD: Tensor, group_ends: Sequence[int]) -> Tensor:
    """Per-group partial reconstructions → (B, G, D), no bias.

    Group g holds latents [group_ends[g-1], group_ends[g]) (group 0 starts at 0; the last end
    must be M). ``partials.cumsum(1)[:, g]`` is the reconstruction from the first
    ``group_ends[g]`` latents, as Matryoshka losses need. One pass over the nnz entries.
    """
    B, G, M = codes.n_rows, len(group_ends), codes.n_latents
    if G == 0 or group_ends[-1] != M or list(group_ends) != sorted(group_ends):
        raise ValueError(f"group_ends must be increasing and end at n_latents={M}")
    ends = torch.tensor(list(group_ends), device=codes.indices.device)
    group_N = torch.bucketize(codes.indices, ends, right=True)
    bag_N = codes.row_ids() * G + group_N
    order_N = torch.argsort(bag_N.int() if B * G < 2**31 else bag_N)
    bag_N = bag_N[order_N]
    offsets = bag_N.new_zeros(B * G + 1)
    torch.cumsum(torch.bincount(bag_N, minlength=B * G), 0, out=offsets[1:])
    values_N = codes.values.to(W_dec_MD.dtype)[order_N]
    out = _BagDecode.apply(values_N, W_dec_MD, codes.indices[order_N], offsets, bag_N)
    return out.view(B, G, -1)


class _EncoderPreacts(torch.autograd.Function):
    """Encoder pre-activations at selected entries and/or a dense column block.

    Entries: pre[n] = (x[rows[n]] − b_dec) · W_enc[:, idx[n]] + b_enc[idx[n]].
    Block: pre[b, u] = (x[b] − b_dec) · W_enc[:, U[u]] + b_enc[U[u]] for every row b.
    The forward returns values already computed by the selection pass (``known_*``) or
    recomputes them exactly. One backward builds a single dense weight gradient: the entries by
    a sorted segment sum (O(N·D)), the block by a small GEMM (O(B·|U|·D)).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x_BD: Tensor,
        W_enc_DM: Tensor,
        b_enc_M: Tensor,
        b_dec_D: Tensor,
        rows_N: Tensor,
        idx_N: Tensor,
        known_N: Tensor | None,
        latents_U: Tensor,
        known_BU: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        xc_BD = x_BD.to(W_enc_DM.dtype) - b_dec_D
        if known_N is None:
            W_enc_MD = W_enc_DM.t().contiguous()
            pre_N = rowwise_dots(xc_BD, rows_N, W_enc_MD, idx_N) + b_enc_M[idx_N]
        else:
            pre_N = known_N.to(W_enc_DM.dtype, copy=True)
        if known_BU is None:
            pre_BU = torch.addmm(b_enc_M[latents_U], xc_BD, W_enc_DM[:, latents_U])
        else:
            pre_BU = known_BU.to(W_enc_DM.dtype, copy=True)
        ctx.save_for_backward(xc_BD, W_enc_DM, rows_N, idx_N, latents_U)
        return pre_N, pre_BU

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_N: Tensor, grad_BU: Tensor) -> tuple[Tensor | None, ...]:
        xc_BD, W_enc_DM, rows_N, idx_N, latents_U = ctx.saved_tensors
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
        M = W_enc_DM.shape[1]
        grad_N, grad_BU = grad_N.to(W_enc_DM.dtype), grad_BU.to(W_enc_DM.dtype)
        has_block = latents_U.numel() > 0
        g_x = g_W = g_be = g_bd = None
        if need_W:
            # dW_enc[:, j] = Σ_{n: idx=j} g_n (x_rows[n] − b_dec): per-latent sums of input rows.
            g_W_MD = segment_weighted_sum(xc_BD, rows_N, idx_N, grad_N, M)
            if has_block:
                g_W_MD.index_add_(0, latents_U, grad_BU.t() @ xc_BD)
            # A latents-major W_enc (saelab.architectures.base.encoder_weight) takes this
            # transposed view as its gradient as is; autograd copies it into any other layout.
            g_W = g_W_MD.t()
        if need_be or need_bd:
            g_be = grad_N.new_zeros(M).index_add_(0, idx_N, grad_N)
            if has_block:
                g_be.index_add_(0, latents_U, grad_BU.sum(0))
        if need_bd:
            assert g_be is not None
            g_bd = -(W_enc_DM @ g_be)  # ∂pre/∂b_dec = −W_enc, summed over selected entries
        if need_x:
            g_x = segment_weighted_sum(W_enc_DM.t().contiguous(), idx_N, rows_N, grad_N, len(xc_BD))
            if has_block:
                g_x += grad_BU @ W_enc_DM[:, latents_U].t()
        return g_x, g_W, g_be if need_be else None, g_bd, None, None, None, None, None


def encoder_preacts(
    x_BD: Tensor,
    W_enc_DM: Tensor,
    b_enc_M: Tensor,
    b_dec_D: Tensor,
    rows_N: Tensor,
    idx_N: Tensor,
    known_N: Tensor | None = None,
    latents_U: Tensor | None = None,
    known_BU: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Pre-activations at entries (rows[n], idx[n]) and on the column block ``latents_U``.

    Returns ``(pre_N, pre_BU)``; see :func:`sparse_preacts` and :func:`block_preacts`. Both
    parts share one backward, so W_enc receives a single dense gradient.
    """
    if latents_U is None:
        latents_U = idx_N.new_zeros(0)
    pre_N, pre_BU = _EncoderPreacts.apply(
        x_BD,
        W_enc_DM,
        b_enc_M,
        b_dec_D,
        rows_N.long(),
        idx_N.long(),
        known_N,
        latents_U.long(),
        known_BU,
    )
    return pre_N, pre_BU


def sparse_preacts(
    x_BD: Tensor,
    W_enc_DM: Tensor,
    b_enc_M: Tensor,
    b_dec_D: Tensor,
    rows_N: Tensor,
    idx_N: Tensor,
    known_N: Tensor | None = None,
) -> Tensor:
    """Encoder pre-activations ``(x − b_dec) @ W_enc + b_enc`` at entries (rows[n], idx[n]).

    If ``known_N`` (values from the selection pass) is given it is returned as the forward value;
    otherwise the values are computed exactly in W_enc's dtype by gathered dot products. The
    backward gives gradients to x, W_enc, b_enc and b_dec in O(N·D), never forming B×M.
    """
    return encoder_preacts(x_BD, W_enc_DM, b_enc_M, b_dec_D, rows_N, idx_N, known_N)[0]


def block_preacts(
    x_BD: Tensor,
    W_enc_DM: Tensor,
    b_enc_M: Tensor,
    b_dec_D: Tensor,
    latents_U: Tensor,
    known_BU: Tensor | None = None,
) -> Tensor:
    """Pre-activations of the latent columns ``latents_U`` for every row → (B, |U|).

    ``known_BU`` (from the selection pass) is returned as the forward value when given;
    otherwise one (B, D) × (D, |U|) GEMM computes it. Backward costs O(B·|U|·D).
    """
    no_entries = latents_U.new_zeros(0, dtype=torch.long)
    args = (x_BD, W_enc_DM, b_enc_M, b_dec_D, no_entries, no_entries, None, latents_U, known_BU)
    return encoder_preacts(*args)[1]
