"""Fused encoder + selection (TopK, BatchTopK, thresholds) with a sparse backward.

The dense pre-activation matrix is never stored whole: it is computed chunk by chunk (~256 MB of
whole rows, or optionally ``BLOCK_LATENTS``-wide column blocks whose per-row top-k candidates are
merged exactly, ``kernels.merge_topk``) into a reused workspace, and only the selected entries
leave the loop. Ties follow ``kernels.ordered_topk``'s rule (equal values: the smaller latent id
first), so every blocking selects the same entries. All backward work is O(nnz·D). AuxK
candidates among dead latents come from the same chunks: no second matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.ops.codes import SparseCodes
from saelab.ops.kernels import (
    BLOCK_FILL,
    merge_topk,
    native_low_precision_matmul,
    ordered_topk,
    workspace,
)
from saelab.ops.sparse import encoder_preacts

#: pre-activation chunk size (256 MB fp32): each chunk's GEMM re-packs all of W_enc, so at 65k
#: latents 256-row chunks (64 MB) ran the product 10-25% slower than one whole-batch GEMM
_CHUNK_ELEMS = 2**26
#: Latents per column block of the top-k selections (0 = whole rows in _CHUNK_ELEMS chunks), and
#: elements per block (16 MB fp32). With blocks, the product is computed a block at a time and
#: selected on while the block is in cache, instead of writing ~256 MB chunks of whole rows to
#: memory and reading them back; each row's per-block top-k are merged exactly. On the 2-core
#: AVX2 CPU this was measured on, the per-block selection costs more than the memory traffic
#: saved (docs/speed.md), so whole rows are the default; benchmarks/train_throughput.py
#: (--wide-paths blocked,new) times both.
BLOCK_LATENTS = 0
_BLOCK_ELEMS = 2**22
#: Fold b_enc into the encoder GEMM as one more input column (below). False restores the older
#: addmm path; benchmarks/train_throughput.py flips it to time both in one process.
FOLD_BIAS = True

AuxSpec = tuple[Tensor, int]  # (dead_mask_M bool, k_aux)


@dataclass(frozen=True, eq=False)
class Encoded:
    """Result of a fused encode: the main codes and, if requested, the AuxK codes; unpacks as
    ``codes, aux = ...``.

    ``keys`` / ``aux_keys`` are the values the selection compared, one per entry of ``codes`` /
    ``aux`` in the same order (detached pre-activations in the product's dtype, negative ones
    included): for fixed-k codes, ``codes`` holds each row's top-k of them under
    ``kernels.ordered_topk``'s rule. Latent-sharded selection
    (``saelab.distributed.latent_sharded``) merges shards on them, so that it compares what the
    unsharded selection compares, also where ReLU zeroed a value or ``exact_values`` recomputed it.
    """

    codes: SparseCodes
    aux: SparseCodes | None
    keys: Tensor | None = None
    aux_keys: Tensor | None = None

    def __iter__(self) -> Iterator[SparseCodes | None]:
        return iter((self.codes, self.aux))


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
        block_latents: int | None = None,
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
        self.chunk_rows = chunk_rows
        self.block_latents = BLOCK_LATENTS if block_latents is None else block_latents

    def chunks(self, rows: Tensor | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield (start, pre_RM) for all rows, or for the given subset of rows.

        ``pre_RM`` lives in a shared workspace: it is only valid until the next chunk.
        """
        for s, _, pre_RM in self.blocks(rows, latents=0):
            yield s, pre_RM

    def blocks(self, rows: Tensor | None = None, latents: int | None = None
               ) -> Iterator[tuple[int, int, Tensor]]:
        """Yield (row start, latent start, pre_RW): row chunks in order, each one's column
        blocks left to right, for all rows or the given subset of rows.

        ``latents`` columns per block (default: this encoder's ``block_latents``; 0: whole
        rows). ``pre_RW`` lives in a shared workspace: it is only valid until the next block.
        """
        xc_BD = self.xc_BD if rows is None else self.xc_BD[rows]
        n, M = xc_BD.shape[0], self.n_latents
        W = min(M, (self.block_latents if latents is None else latents) or M)
        R = self.chunk_rows or max(1, (_BLOCK_ELEMS if W < M else _CHUNK_ELEMS) // W)
        buf = workspace(min(R, n) * W, self.W_DM.dtype, self.W_DM.device)
        for s in range(0, n, R):
            r = min(R, n - s)
            for c in range(0, M, W):
                w = min(W, M - c)
                pre_RW = buf[: r * w].view(r, w)
                self._matmul(xc_BD[s : s + r], pre_RW, c)
                yield s, c, pre_RW

    def _matmul(self, xc_RD: Tensor, out_RW: Tensor, c: int) -> None:
        """Pre-activations of latents [c, c + width) for the rows ``xc_RD``, into ``out_RW``."""
        w = out_RW.shape[1]
        W_DW, b_W = self.W_DM[:, c : c + w], self.b_M[c : c + w]
        if self.folded:
            torch.mm(xc_RD, W_DW, out=out_RW)
            return
        if not self.col_block:
            torch.addmm(b_W, xc_RD, W_DW, out=out_RW)
            return
        for j in range(0, w, self.col_block):
            cols = slice(j, j + self.col_block)
            out_RW[:, cols] = torch.addmm(b_W[cols], xc_RD, W_DW[:, cols])


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


class _RowCandidates:
    """Each row's top-k candidates from the column blocks of one row chunk, merged exactly."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.vals: list[Tensor] = []
        self.ids: list[Tensor] = []

    def add(self, pre_RW: Tensor, ids_W: Tensor | int, k: int | None = None) -> None:
        """Take the block's own top-min(k, width) per row (``k`` defaults to the merge's);
        ``ids_W`` maps the block's columns to latent ids (a tensor, or the id of its first
        column when they are consecutive)."""
        vals_Rk, pos_Rk = ordered_topk(pre_RW, self.k if k is None else k)
        self.vals.append(vals_Rk)
        self.ids.append(pos_Rk + ids_W if isinstance(ids_W, int) else ids_W[pos_Rk])

    def merge(self) -> tuple[Tensor, Tensor]:
        """(values, latent ids) of each row's top-k over the blocks added; starts afresh."""
        vals, ids = self.vals, self.ids
        self.vals, self.ids = [], []
        if len(vals) == 1:
            return vals[0], ids[0]
        return merge_topk(torch.cat(vals, dim=1), torch.cat(ids, dim=1), self.k)


class _AuxSelector:
    """Per-row top-k_aux among dead latents, collected block by block (AuxK loss).

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
        self.candidates = _RowCandidates(self.k)
        self._dead_ranges: dict[tuple[int, int], tuple[int, int]] = {}

    def _dead_range(self, c: int, w: int) -> tuple[int, int]:
        """Positions [lo, hi) in ``dead_idx`` (ascending) of the dead latents in [c, c + w)."""
        if (c, w) not in self._dead_ranges:
            bounds = torch.tensor([c, c + w], device=self.dead_idx.device)
            lo, hi = torch.searchsorted(self.dead_idx, bounds).tolist()
            self._dead_ranges[c, w] = (lo, hi)
        return self._dead_ranges[c, w]

    def observe(self, s: int, c: int, pre_RW: Tensor) -> None:
        """Select on the block of latents [c, c + width). May overwrite ``pre_RW``: call it last
        on a block."""
        if self.k == 0:
            return
        r, w = pre_RW.shape
        lo, hi = self._dead_range(c, w)
        if hi == lo:
            return
        if self.gather:
            sub_RU = pre_RW.index_select(1, self.dead_idx[lo:hi] - c)
            if self.block_BU is not None:
                self.block_BU[s : s + r, lo:hi] = sub_RU
            # Block mode keeps positions within the dead set; entry modes keep latent ids. Both
            # rise with the latent id, so the merge's tie rule is the same.
            self.candidates.add(sub_RU, lo if self.block_BU is not None else self.dead_idx[lo:hi])
            return
        pre_RW.masked_fill_(~self.dead_mask_M[c : c + w], float("-inf"))
        # at most as many as the block has dead latents, so no -inf is ever a candidate
        self.candidates.add(pre_RW, c, k=min(self.k, hi - lo))

    def finish_rows(self, s: int, r: int) -> None:
        """Merge the candidates of rows [s, s + r) once all their blocks were observed."""
        if self.k > 0:
            self.vals_BK[s : s + r], self.idx_BK[s : s + r] = self.candidates.merge()

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


def _per_row_topk(
    pre: _Preacts, k: int, aux_sel: _AuxSelector | None = None, rows: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(values, latent ids) of each row's top-k (``kernels.ordered_topk``'s tie rule), for all
    rows or the given subset, from the product's blocks; aux selection rides along."""
    n = pre.n_rows if rows is None else rows.numel()
    vals_BK = pre.W_DM.new_empty(n, k)
    idx_BK = torch.empty(n, k, dtype=torch.long, device=pre.W_DM.device)
    main = _RowCandidates(k)
    for s, c, pre_RW in pre.blocks(rows):
        main.add(pre_RW, c)
        if aux_sel is not None:
            aux_sel.observe(s, c, pre_RW)
        if c + pre_RW.shape[1] == pre.n_latents:  # the row chunk's last block
            r = pre_RW.shape[0]
            vals_BK[s : s + r], idx_BK[s : s + r] = main.merge()
            if aux_sel is not None:
                aux_sel.finish_rows(s, r)
    return vals_BK, idx_BK


def _select_per_row(pre: _Preacts, k: int, aux_sel: _AuxSelector | None) -> _Entries:
    """Per-row top-k over all blocks (aux selection rides along on the same blocks)."""
    return _fixed_k_entries(*_per_row_topk(pre, k, aux_sel))


def _global_topk(
    cand: _Entries,
    width_B: Tensor,
    total: int,
    n_latents: int,
    refill: Callable[[Tensor, int], _Entries],
) -> _Entries:
    """Top ``total`` entries over per-row candidate lists, exact.

    Tie rule: a larger value first, then the smaller row, then the smaller latent id (each
    row's list follows ``kernels.ordered_topk``'s rule, so the rules agree). A row whose
    candidates were *all* taken may hold more winners beyond its list: refill it with a 4×
    longer list (recomputing its pre-activations) and select again.
    """
    while True:
        key_N = cand.rows_N * n_latents + cand.idx_N
        n_keep = min(total, cand.vals_N.numel())
        keep = ordered_topk(cand.vals_N[None], n_keep, key_RM=key_N[None])[1][0]
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
        v_SC, i_SC = _per_row_topk(pre, width, rows=rows_S)
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
    block_latents: int | None,
) -> Encoded:
    """Shared driver: blocked selection (no grad), then differentiable values."""
    pre = _Preacts(*params, matmul_dtype, chunk_rows, block_latents)
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
    aux_keys = None
    if aux_sel is not None and aux_codes is not None:
        aux_keys = aux_sel.vals_BK.reshape(-1)
    return Encoded(codes, aux_codes, main.vals_N, aux_keys)


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
    block_latents: int | None = None,
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
        chunk_rows: rows per pre-activation block (default: ~256 MB chunks of whole rows, or
            16 MB column blocks).
        block_latents: latents per pre-activation block (default ``BLOCK_LATENTS``; 0 = whole
            rows). The selection is the same for every blocking: each row's k largest, equal
            values taken in latent order (``kernels.ordered_topk``).

    Returns:
        ``Encoded(codes, aux)`` with fixed-k ``SparseCodes``; values carry autograd history
        into W_enc, b_enc, b_dec (and x) with an O(nnz·D) backward.
    """
    k = min(k, W_enc_DM.shape[1])
    params = _Params(x_BD, W_enc_DM, b_enc_M, b_dec_D)

    def select(pre: _Preacts, aux_sel: _AuxSelector | None) -> _Entries:
        return _select_per_row(pre, k, aux_sel)

    return _encode(params, select, k, matmul_dtype, aux, exact_values, chunk_rows, block_latents)


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
    block_latents: int | None = None,
) -> Encoded:
    """BatchTopK encoder: keep the round(B·k) largest pre-activations of the whole batch, then
    ReLU (k may be fractional).

    Rows get variable counts, so ``codes`` is CSR (non-positive winners, which ReLU would zero,
    are dropped). Selection is exact: each row contributes its top ``candidates`` (default 2k)
    and rows whose whole list wins are re-expanded; equal values are taken by row, then latent
    id. Other arguments as in :func:`topk_encode`;
    ``aux`` is per-row top-k_aux among dead latents, as for TopK.
    """
    params = _Params(x_BD, W_enc_DM, b_enc_M, b_dec_D)

    def select(pre: _Preacts, aux_sel: _AuxSelector | None) -> _Entries:
        return _select_batch(pre, k, candidates or math.ceil(2 * k), aux_sel)

    return _encode(params, select, None, matmul_dtype, aux, exact_values, chunk_rows,
                   block_latents)


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
