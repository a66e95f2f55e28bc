"""Fused encoder + selection (TopK, BatchTopK, thresholds) with a sparse backward.

The dense pre-activation matrix is computed chunk by chunk into a reused workspace and only the
selected entries leave the loop, so peak extra memory is one chunk (~256 MB) and all backward
work is O(nnz·D). AuxK candidates among dead latents come from the same chunks: no second
matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.ops.codes import SparseCodes
from saelab.ops.kernels import BLOCK_FILL, native_low_precision_matmul, row_topk, workspace
from saelab.ops.sparse import encoder_preacts

#: pre-activation chunk size (256 MB fp32): each chunk's GEMM re-packs all of W_enc, so at 65k
#: latents 256-row chunks (64 MB) ran the product 10-25% slower than one whole-batch GEMM
_CHUNK_ELEMS = 2**26
#: Fold b_enc into the encoder GEMM as one more input column (below). False restores the older
#: addmm path; benchmarks/train_throughput.py flips it to time both in one process.
FOLD_BIAS = True

AuxSpec = tuple[Tensor, int]  # (dead_mask_M bool, k_aux)


class Encoded(NamedTuple):
    """Result of a fused encode: the main codes and, if requested, the AuxK codes."""

    codes: SparseCodes
    aux: SparseCodes | None


class _Params(NamedTuple):
    x_BD: Tensor
    W_enc_DM: Tensor
    b_enc_M: Tensor
    b_dec_D: Tensor


class _Entries(NamedTuple):
    rows_N: Tensor
    idx_N: Tensor
    vals_N: Tensor


class _Preacts:
    """Dense pre-activations ``(x − b_dec) @ W_enc + b_enc`` produced in row chunks (no grad)."""

    def __init__(
        self,
        x_BD: Tensor,
        W_enc_DM: Tensor,
        b_enc_M: Tensor,
        b_dec_D: Tensor,
        matmul_dtype: torch.dtype | None,
        chunk_rows: int | None,
    ) -> None:
        dtype = matmul_dtype or W_enc_DM.dtype
        with torch.no_grad():
            xc_BD = (x_BD.to(W_enc_DM.dtype) - b_dec_D.detach()).to(dtype)
            # CPUs without native bf16/fp16 GEMM fall back to a slow generic kernel. It runs
            # ~30× faster with the input stored transposed and ~1024-column blocks (AVX2,
            # M=16384: 0.4 → 12 GFLOP/s; still ~5× slower than fp32 there).
            self.col_block = 0
            if dtype in (torch.bfloat16, torch.float16) and x_BD.device.type == "cpu":
                xc_BD = xc_BD.t().contiguous().t()
                self.col_block = 0 if native_low_precision_matmul(x_BD.device) else 1024
            self.xc_BD = xc_BD
            self.W_DM = W_enc_DM.detach().to(dtype)
            self.b_M = b_enc_M.detach().to(dtype)
            # addmm(out=) first copies the broadcast bias into every B×M chunk (one more full
            # pass over B·M floats, ~1 GB a step at 65k latents); with b_enc as an extra row of
            # W and a column of ones in x the GEMM writes the pre-activations alone, for one
            # D·M copy of W instead.
            self.folded = FOLD_BIAS and not self.col_block
            if self.folded:
                self.xc_BD = torch.cat([xc_BD, xc_BD.new_ones(xc_BD.shape[0], 1)], dim=1)
                self.W_DM = _fold_bias(self.W_DM, self.b_M)
        self.n_rows, self.n_latents = x_BD.shape[0], W_enc_DM.shape[1]
        self.chunk_rows = chunk_rows or max(1, _CHUNK_ELEMS // self.n_latents)

    def chunks(self, rows: Tensor | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield (start, pre_RM) for all rows, or for the given subset of rows.

        ``pre_RM`` lives in a shared workspace: it is only valid until the next chunk.
        """
        xc_BD = self.xc_BD if rows is None else self.xc_BD[rows]
        n, R, M = xc_BD.shape[0], self.chunk_rows, self.n_latents
        buf = workspace(min(R, n) * M, self.W_DM.dtype, self.W_DM.device)
        for s in range(0, n, R):
            r = min(R, n - s)
            pre_RM = buf[: r * M].view(r, M)
            self._matmul(xc_BD[s : s + r], pre_RM)
            yield s, pre_RM

    def _matmul(self, xc_RD: Tensor, out_RM: Tensor) -> None:
        if self.folded:
            torch.mm(xc_RD, self.W_DM, out=out_RM)
            return
        if not self.col_block:
            torch.addmm(self.b_M, xc_RD, self.W_DM, out=out_RM)
            return
        for j in range(0, self.n_latents, self.col_block):
            cols = slice(j, j + self.col_block)
            out_RM[:, cols] = torch.addmm(self.b_M[cols], xc_RD, self.W_DM[:, cols])


def _fold_bias(W_DM: Tensor, b_M: Tensor) -> Tensor:
    """[W; b] as a (D+1, M) matrix in W's own layout, written into a reused workspace.

    A latents-major W (``W.t()`` contiguous, see ``saelab.architectures.base.encoder_weight``)
    gives a latents-major result, so the copy runs row by row in both cases (``torch.cat`` would
    transpose it, and allocates 200 MB a step at 65k latents).
    """
    D, M = W_DM.shape
    buf = workspace((D + 1) * M, W_DM.dtype, W_DM.device, purpose="folded_encoder")
    if W_DM.t().is_contiguous():
        out_MD = buf.view(M, D + 1)
        out_MD[:, :D].copy_(W_DM.t())
        out_MD[:, D].copy_(b_M)
        return out_MD.t()
    out_DM = buf.view(D + 1, M)
    out_DM[:D].copy_(W_DM)
    out_DM[D].copy_(b_M)
    return out_DM


class _AuxSelector:
    """Per-row top-k_aux among dead latents, collected chunk by chunk (AuxK loss).

    Three strategies: when k_aux fills ≥ BLOCK_FILL of the dead set, keep the whole (B, n_dead)
    pre-activation block and use GEMMs in the backward; otherwise emit sparse entries, gathering
    the dead columns when few or masking the live ones in place when many.
    """

    def __init__(self, aux: AuxSpec, pre: _Preacts) -> None:
        dead_mask_M, k_aux = aux
        self.dead_mask_M = dead_mask_M.to(device=pre.W_DM.device, dtype=torch.bool)
        self.dead_idx = self.dead_mask_M.nonzero().squeeze(1)
        n_dead, B = self.dead_idx.numel(), pre.n_rows
        self.k = min(int(k_aux), n_dead)
        self.block = self.k > 0 and self.k >= BLOCK_FILL * n_dead
        self.gather = self.block or n_dead * 8 <= pre.n_latents
        self.vals_BK = pre.W_DM.new_empty(B, self.k)
        self.idx_BK = torch.empty(B, self.k, dtype=torch.long, device=pre.W_DM.device)
        self.block_BU = pre.W_DM.new_empty(B, n_dead) if self.block else None

    def observe(self, s: int, pre_RM: Tensor) -> None:
        """Select on one chunk. May overwrite ``pre_RM``: call it last on a chunk."""
        if self.k == 0:
            return
        r = pre_RM.shape[0]
        if self.gather:
            sub_RU = pre_RM.index_select(1, self.dead_idx)
            if self.block_BU is not None:
                self.block_BU[s : s + r] = sub_RU
            vals, pos = sub_RU.topk(self.k, dim=1, sorted=False)
            self.vals_BK[s : s + r] = vals
            # Block mode keeps positions within the block; entry modes keep latent ids.
            self.idx_BK[s : s + r] = pos if self.block_BU is not None else self.dead_idx[pos]
            return
        pre_RM.masked_fill_(~self.dead_mask_M, float("-inf"))
        self.vals_BK[s : s + r], self.idx_BK[s : s + r] = row_topk(pre_RM, self.k)

    def entries(self) -> _Entries | None:
        """Sparse entries to activate with the main codes (None in block mode)."""
        return None if self.block else _fixed_k_entries(self.vals_BK, self.idx_BK)

    def block_codes(self, pre_BU: Tensor) -> SparseCodes:
        """Block mode: codes gathered from the differentiable (B, n_dead) pre-activations."""
        vals_BK = torch.relu(pre_BU.gather(1, self.idx_BK))
        return SparseCodes.from_fixed_k(vals_BK, self.dead_idx[self.idx_BK], len(self.dead_mask_M))


def _fixed_k_entries(vals_BK: Tensor, idx_BK: Tensor) -> _Entries:
    B, K = vals_BK.shape
    rows_N = torch.arange(B, device=vals_BK.device).repeat_interleave(K)
    return _Entries(rows_N, idx_BK.reshape(-1), vals_BK.reshape(-1))


def _select_per_row(pre: _Preacts, k: int, aux_sel: _AuxSelector | None) -> _Entries:
    """Per-row top-k over all chunks (aux selection rides along on the same chunks)."""
    vals_BK = pre.W_DM.new_empty(pre.n_rows, k)
    idx_BK = torch.empty(pre.n_rows, k, dtype=torch.long, device=pre.W_DM.device)
    for s, pre_RM in pre.chunks():
        r = pre_RM.shape[0]
        vals_BK[s : s + r], idx_BK[s : s + r] = row_topk(pre_RM, k)
        if aux_sel is not None:
            aux_sel.observe(s, pre_RM)
    return _fixed_k_entries(vals_BK, idx_BK)


def _global_topk(
    cand: _Entries,
    width_B: Tensor,
    total: int,
    n_latents: int,
    refill: Callable[[Tensor, int], _Entries],
) -> _Entries:
    """Top ``total`` entries over per-row candidate lists, exact.

    A row whose candidates were *all* taken may hold more winners beyond its list: refill it
    with a 4× longer list (recomputing its pre-activations) and select again.
    """
    while True:
        keep = cand.vals_N.topk(min(total, cand.vals_N.numel()), sorted=False).indices
        taken_B = torch.zeros_like(width_B).index_add_(0, cand.rows_N[keep], torch.ones_like(keep))
        saturated_B = (taken_B == width_B) & (width_B < n_latents)
        if not bool(saturated_B.any()):
            return _Entries(cand.rows_N[keep], cand.idx_N[keep], cand.vals_N[keep])
        rows_S = saturated_B.nonzero().squeeze(1)
        c = min(n_latents, 4 * int(width_B[rows_S].max()))
        new = refill(rows_S, c)
        stay_N = ~saturated_B[cand.rows_N]
        cand = _Entries(*(torch.cat([a[stay_N], b]) for a, b in zip(cand, new, strict=True)))
        width_B[rows_S] = c


def _select_batch(pre: _Preacts, k: float, n_cand: int, aux_sel: _AuxSelector | None) -> _Entries:
    """BatchTopK: the round(B·k) largest entries of the whole batch, grouped by row."""
    B, M = pre.n_rows, pre.n_latents
    c = min(M, max(n_cand, 1))
    cand = _select_per_row(pre, c, aux_sel)

    def refill(rows_S: Tensor, width: int) -> _Entries:
        v_SC = pre.W_DM.new_empty(rows_S.numel(), width)
        i_SC = torch.empty(rows_S.numel(), width, dtype=torch.long, device=v_SC.device)
        for s, pre_RM in pre.chunks(rows_S):
            r = pre_RM.shape[0]
            v_SC[s : s + r], i_SC[s : s + r] = row_topk(pre_RM, width)
        return _Entries(rows_S.repeat_interleave(width), i_SC.reshape(-1), v_SC.reshape(-1))

    width_B = torch.full((B,), c, dtype=torch.long, device=pre.W_DM.device)
    chosen = _global_topk(cand, width_B, max(1, round(B * k)), M, refill)
    # ReLU would zero non-positive winners anyway; dropping them keeps the codes truly sparse.
    pos_N = chosen.vals_N > 0
    order_N = torch.argsort(chosen.rows_N[pos_N].int())
    return _Entries(*(t[pos_N][order_N] for t in chosen))


def _activate(
    params: _Params, parts: list[_Entries], exact: bool, aux_sel: _AuxSelector | None = None
) -> tuple[list[Tensor], SparseCodes | None]:
    """Differentiable ReLU(pre-activation) values for each entry list, plus block-mode aux codes.

    One autograd node for everything, so W_enc gets a single dense gradient.
    """
    rows_N = torch.cat([p.rows_N for p in parts])
    idx_N = torch.cat([p.idx_N for p in parts])
    known_N = None if exact else torch.cat([p.vals_N for p in parts])
    block = aux_sel is not None and aux_sel.block
    latents_U = aux_sel.dead_idx if aux_sel is not None and block else None
    known_BU = aux_sel.block_BU if aux_sel is not None and not exact else None
    pre_N, pre_BU = encoder_preacts(*params, rows_N, idx_N, known_N, latents_U, known_BU)
    values = list(torch.relu(pre_N).split([p.idx_N.numel() for p in parts]))
    aux_codes = aux_sel.block_codes(pre_BU) if aux_sel is not None and block else None
    return values, aux_codes


def _encode(
    params: _Params,
    select: Callable[[_Preacts, _AuxSelector | None], _Entries],
    fixed_k: int | None,
    matmul_dtype: torch.dtype | None,
    aux: AuxSpec | None,
    exact_values: bool,
    chunk_rows: int | None,
) -> Encoded:
    """Shared driver: chunked selection (no grad), then differentiable values."""
    pre = _Preacts(*params, matmul_dtype, chunk_rows)
    B, M = pre.n_rows, pre.n_latents
    aux_sel = _AuxSelector(aux, pre) if aux is not None else None
    with torch.no_grad():
        main = select(pre, aux_sel)
    aux_entries = aux_sel.entries() if aux_sel is not None else None
    parts = [main] if aux_entries is None else [main, aux_entries]
    exact = _needs_exact(params.W_enc_DM, matmul_dtype, exact_values)
    values, aux_codes = _activate(params, parts, exact, aux_sel)
    if fixed_k is not None:
        codes = SparseCodes.from_fixed_k(values[0].view(B, fixed_k), main.idx_N.view(B, -1), M)
    else:
        codes = SparseCodes.from_rows(main.rows_N, main.idx_N, values[0], B, M)
    if aux_sel is not None and aux_entries is not None:
        vals_BK = values[1].view(B, aux_sel.k)
        aux_codes = SparseCodes.from_fixed_k(vals_BK, aux_entries.idx_N.view(B, -1), M)
    return Encoded(codes, aux_codes)


def _needs_exact(W_enc_DM: Tensor, matmul_dtype: torch.dtype | None, exact: bool) -> bool:
    return exact and matmul_dtype is not None and matmul_dtype != W_enc_DM.dtype


def topk_encode(
    x_BD: Tensor,
    W_enc_DM: Tensor,
    b_enc_M: Tensor,
    b_dec_D: Tensor,
    k: int,
    *,
    matmul_dtype: torch.dtype | None = None,
    aux: AuxSpec | None = None,
    exact_values: bool = True,
    chunk_rows: int | None = None,
) -> Encoded:
    """TopK encoder: per row keep the k largest pre-activations, then ReLU.

    Args:
        x_BD: inputs (no grad needed; gradient to x is supported).
        W_enc_DM, b_enc_M, b_dec_D: encoder weights; pre = (x − b_dec) @ W_enc + b_enc.
        k: latents kept per row.
        matmul_dtype: run the dense encoder product in this dtype (e.g. bfloat16). Selection uses
            those pre-activations.
        aux: ``(dead_mask_M, k_aux)``: also return per-row top-k_aux among dead latents
            (ReLU'd) for the AuxK loss, from the same pre-activation chunks.
        exact_values: with a reduced ``matmul_dtype``, recompute the kept values in W_enc's
            dtype by gathered dot products (cost O(nnz·D)).
        chunk_rows: rows per pre-activation chunk (default: ~256 MB chunks).

    Returns:
        ``Encoded(codes, aux)`` with fixed-k ``SparseCodes``; values carry autograd history
        into W_enc, b_enc, b_dec (and x) with an O(nnz·D) backward.
    """
    k = min(k, W_enc_DM.shape[1])
    params = _Params(x_BD, W_enc_DM, b_enc_M, b_dec_D)

    def select(pre: _Preacts, aux_sel: _AuxSelector | None) -> _Entries:
        return _select_per_row(pre, k, aux_sel)

    return _encode(params, select, k, matmul_dtype, aux, exact_values, chunk_rows)


def batch_topk_encode(
    x_BD: Tensor,
    W_enc_DM: Tensor,
    b_enc_M: Tensor,
    b_dec_D: Tensor,
    k: float,
    *,
    matmul_dtype: torch.dtype | None = None,
    aux: AuxSpec | None = None,
    exact_values: bool = True,
    candidates: int | None = None,
    chunk_rows: int | None = None,
) -> Encoded:
    """BatchTopK encoder: keep the round(B·k) largest pre-activations of the whole batch, then
    ReLU (k may be fractional).

    Rows get variable counts, so ``codes`` is CSR (non-positive winners, which ReLU would zero,
    are dropped). Selection is exact: each row contributes its top ``candidates`` (default 2k)
    and rows whose whole list wins are re-expanded. Other arguments as in :func:`topk_encode`;
    ``aux`` is per-row top-k_aux among dead latents, as for TopK.
    """
    params = _Params(x_BD, W_enc_DM, b_enc_M, b_dec_D)

    def select(pre: _Preacts, aux_sel: _AuxSelector | None) -> _Entries:
        return _select_batch(pre, k, candidates or math.ceil(2 * k), aux_sel)

    return _encode(params, select, None, matmul_dtype, aux, exact_values, chunk_rows)


def threshold_encode(
    x_BD: Tensor,
    W_enc_DM: Tensor,
    b_enc_M: Tensor,
    b_dec_D: Tensor,
    threshold: float | Tensor,
    *,
    matmul_dtype: torch.dtype | None = None,
    chunk_rows: int | None = None,
) -> SparseCodes:
    """Threshold (JumpReLU-style) encoder: keep pre-activations above ``max(threshold, 0)``.

    ``threshold`` is a global float (BatchTopK inference) or a per-latent (M,) tensor
    (JumpReLU). Kept values are the pre-activations themselves. If grad is enabled and the
    weights require it, the values are differentiable with the usual sparse backward (no
    gradient flows to ``threshold``).
    """
    params = _Params(x_BD, W_enc_DM, b_enc_M, b_dec_D)
    pre = _Preacts(*params, matmul_dtype, chunk_rows)
    if isinstance(threshold, Tensor):
        thr: float | Tensor = threshold.detach().clamp_min(0).to(pre.W_DM.dtype)
    else:
        thr = max(float(threshold), 0.0)
    rows, cols, vals = [], [], []
    with torch.no_grad():
        for s, pre_RM in pre.chunks():
            r_N, c_N = (pre_RM > thr).nonzero(as_tuple=True)
            rows.append(r_N + s)
            cols.append(c_N)
            vals.append(pre_RM[r_N, c_N])
    entries = _Entries(torch.cat(rows), torch.cat(cols), torch.cat(vals))
    exact = _needs_exact(W_enc_DM, matmul_dtype, True)
    if torch.is_grad_enabled() or exact:
        (values_N,), _ = _activate(params, [entries], exact)
    else:
        values_N = entries.vals_N.to(W_enc_DM.dtype)
    return SparseCodes.from_rows(entries.rows_N, entries.idx_N, values_N, pre.n_rows, pre.n_latents)
