"""Low-level sparse primitives built from fast ATen kernels (no custom C++).

Measured on a 2-core AVX2 CPU at B=4096, M=16384, D=768, k=32 (nnz=131k):
``index_add_`` of gathered rows takes ~2.4 s, while ``embedding_bag`` over entries sorted by
latent does the same sum in ~70 ms; gather + multiply + sum for per-entry dot products takes
~400 ms, while the embedding-bag per-sample-weight backward kernel takes ~70 ms. Large fresh
allocations page-fault (~330 ms per 256 MB), hence the reusable workspace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_PSW_BACKWARD = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
_GROUP = 32  # group width for the two-stage row top-k
_DOT_CHUNK = 8192  # entries per chunk in the fallback dot-product path


class _Workspace(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


_WORKSPACE = _Workspace()


def workspace(numel: int, dtype: torch.dtype, device: torch.device, purpose: str = "chunk"
              ) -> Tensor:
    """A reusable flat scratch buffer of at least ``numel`` elements (per thread, purpose,
    device and dtype; buffers of different purposes never overlap).

    Contents are garbage; callers must overwrite before reading. Avoids re-faulting big
    pre-activation chunks on every step.
    """
    key = (purpose, torch.device(device), dtype)
    buf = _WORKSPACE.buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        _WORKSPACE.buffers[key] = buf
    return buf[:numel]


def release_workspace() -> None:
    """Free this thread's scratch buffers."""
    _WORKSPACE.buffers.clear()


def tune_cpu_allocator(threshold_bytes: int = 2**30) -> bool:
    """Make glibc keep freed large buffers for reuse instead of unmapping them.

    By default every CPU tensor over 32 MB is a fresh mmap, so re-creating the per-step
    pre-activation chunks, weight gradients and activations page-faults them again (measured
    ~230 ms per 256 MB here; ~10% of a TopK training step). Process-wide and opt-in: call once
    at startup of a CPU training run. Returns False where it does not apply (non-glibc).
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    ok_mmap = mallopt(m_mmap_threshold, threshold_bytes) == 1
    return ok_mmap and mallopt(m_trim_threshold, 2 * threshold_bytes - 1) == 1


def release_freed_heap() -> bool:
    """Hand the freed parts of glibc's heap back to the OS (``malloc_trim(0)``).

    Once a large buffer has been freed, glibc raises its mmap threshold (up to 32 MB) and
    serves later buffers of that size from the heap, whose holes it keeps: a long stream of
    batch-sized allocations then grows the resident set with the number of batches, not with
    what is live. Call it now and then (not per batch: trimmed pages fault in again). Returns
    False where it does not apply (non-glibc).
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """A glibc function by name, looked up once (``find_library`` runs ``ldconfig``, so the
    allocator helpers can be called per batch)."""
    lib = ctypes.util.find_library("c")
    if lib is None:
        return None
    try:
        return getattr(ctypes.CDLL(lib), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def native_low_precision_matmul(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls on ``device`` have hardware support (so ``matmul_dtype=bf16`` pays).

    True on CUDA; on CPU only with AVX512-BF16/AMX (oneDNN). On AVX2-only CPUs a bf16 GEMM is
    several times *slower* than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


@contextmanager
def sparse_autocast(device: torch.device) -> Iterator[torch.dtype | None]:
    """Hand autocast over to the sparse kernels: yields the autocast dtype (None when autocast
    is off on ``device``) with autocast turned off inside.

    The sparse path runs its encoder product in that dtype itself (``matmul_dtype``) and keeps
    gathers, sparse products, selection values and gradient accumulation in fp32; letting
    autocast cast its ops one by one would put those in bf16 too.
    """
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        yield None
        return
    dtype = torch.get_autocast_dtype(kind)
    with torch.autocast(kind, enabled=False):
        yield dtype


def rowwise_dots(A_RD: Tensor, rows_N: Tensor, W_MD: Tensor, idx_N: Tensor) -> Tensor:
    """``out[n] = <A[rows[n]], W[idx[n]]>`` without materialising the gathered (N, D) rows."""
    rows_N, idx_N = rows_N.long().contiguous(), idx_N.long().contiguous()
    if _PSW_BACKWARD is not None and idx_N.numel() > 0:
        # The per-sample-weights backward of embedding_bag is exactly this gather-dot; it reads
        # bag ids from offset2bag, so entries need not be grouped. Offsets are unused there.
        offsets = idx_N.new_zeros(1)
        return _PSW_BACKWARD(A_RD.contiguous(), W_MD, idx_N, offsets, rows_N, 0, -1)
    out_N = A_RD.new_empty(idx_N.numel())
    for s in range(0, idx_N.numel(), _DOT_CHUNK):
        sl = slice(s, s + _DOT_CHUNK)
        out_N[sl] = (A_RD[rows_N[sl]] * W_MD[idx_N[sl]]).sum(-1)
    return out_N


def segment_offsets(sorted_keys_N: Tensor, n_segments: int) -> Tensor:
    """(n_segments+1,) CSR offsets of ascending keys in [0, n_segments)."""
    bounds = torch.arange(n_segments + 1, device=sorted_keys_N.device, dtype=sorted_keys_N.dtype)
    return torch.searchsorted(sorted_keys_N, bounds)


def segment_weighted_sum(
    table_TD: Tensor, lookup_N: Tensor, key_N: Tensor, weights_N: Tensor, n_out: int
) -> Tensor:
    """``out[j] = Σ_{n: key[n]=j} weights[n] · table[lookup[n]]`` → (n_out, D), dense.

    Sorts entries by key once, then one embedding_bag pass (each output row is a bag).
    """
    if key_N.numel() == 0:
        return table_TD.new_zeros(n_out, table_TD.shape[1])
    # int32 keys sort much faster; order within a key is irrelevant for a sum.
    sorted_keys_N, order_N = torch.sort(key_N.int() if n_out < 2**31 else key_N)
    return F.embedding_bag(
        lookup_N[order_N],
        table_TD,
        segment_offsets(sorted_keys_N, n_out),
        mode="sum",
        per_sample_weights=weights_N[order_N].to(table_TD.dtype),
        include_last_offset=True,
    )


class BlockSupport(NamedTuple):
    """Entries that densely fill a (B, |U|) block: the block's latents and each entry's column."""

    latents_U: Tensor
    col_N: Tensor


# A dense block is cheaper once entries fill this fraction of it: per element a GEMM costs
# ~0.05 µs vs ~0.6 µs per gathered entry (D=768, measured), so the break-even is near 0.08.
BLOCK_FILL = 0.1


def block_support(idx_N: Tensor, n_rows: int, n_latents: int) -> BlockSupport | None:
    """The latents used by ``idx_N`` if the entries fill ≥ BLOCK_FILL of a (n_rows, |U|) block.

    E.g. AuxK codes (k_aux of a few hundred dead latents per row) are nearly dense over the dead
    set: two small GEMMs beat a million-row gather.
    """
    if idx_N.numel() == 0:
        return None
    used_M = torch.zeros(n_latents, dtype=torch.bool, device=idx_N.device)
    used_M[idx_N] = True
    latents_U = used_M.nonzero().squeeze(1)
    if idx_N.numel() < BLOCK_FILL * n_rows * latents_U.numel():
        return None
    col_M = torch.full((n_latents,), -1, dtype=torch.long, device=idx_N.device)
    col_M[latents_U] = torch.arange(latents_U.numel(), device=idx_N.device)
    return BlockSupport(latents_U, col_M[idx_N])


def row_topk(pre_RM: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact per-row top-k (unsorted) → (values_Rk, indices_Rk).

    Two stages when M is large: take the max of each group of 32 columns, keep the k groups
    with the largest maxima (every top-k element lies in one of them), then top-k over those
    k·32 candidates. ~3× faster than ``torch.topk`` on CPU at M=16384, k=32.
    """
    R, M = pre_RM.shape
    if k == 0 or M % _GROUP != 0 or 4 * k * _GROUP > M or not pre_RM.is_contiguous():
        vals_Rk, idx_Rk = pre_RM.topk(k, dim=1, sorted=False)
        return vals_Rk, idx_Rk
    groups_RGS = pre_RM.view(R, M // _GROUP, _GROUP)
    gidx_Rk = groups_RGS.amax(dim=2).topk(k, dim=1, sorted=False).indices
    cand_RC = groups_RGS.gather(1, gidx_Rk[:, :, None].expand(R, k, _GROUP)).view(R, -1)
    vals_Rk, pos_Rk = cand_RC.topk(k, dim=1, sorted=False)
    idx_Rk = gidx_Rk.gather(1, pos_Rk // _GROUP) * _GROUP + pos_Rk % _GROUP
    return vals_Rk, idx_Rk


def ordered_topk(pre_RM: Tensor, k: int, key_RM: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-row top-k under a total order → (values_Rk, positions_Rk), values descending.

    Tie rule: a larger value comes first; among equal values the smaller key (``key_RM``, by
    default the column position) does. So the selected *set* is fully determined, whatever
    order the entries arrive in: a row's top-k is the same computed over the whole row or as
    the top-k of per-block top-k candidates (:func:`merge_topk`); ``torch.topk`` alone picks
    among tied entries arbitrarily. The two stages of :func:`row_topk` each take one entry
    more than needed, which finds the rows with a tie at the cut at no extra pass: the
    (k+1)-th candidate equals the k-th, or a group left out has a maximum as large as the k-th
    value. Only those rows are redone (:func:`_first_ties`, or a stable sort with ``key_RM``).
    Rows must hold no NaN (pre-activations of finite inputs are finite).
    """
    R, M = pre_RM.shape
    k = min(k, M)
    if k == 0 or k == M or R == 0:
        return row_topk(pre_RM, k)  # nothing or everything: no tie to break
    gmax_RG = None
    if M % _GROUP == 0 and 4 * k * _GROUP <= M and pre_RM.is_contiguous():
        groups_RGS = pre_RM.view(R, M // _GROUP, _GROUP)
        gmax_RG = groups_RGS.amax(dim=2)
        gmax_Rj, gidx_Rj = gmax_RG.topk(k + 1, dim=1)  # sorted, j = k + 1
        # every entry outside the k groups kept is at most the (k+1)-th group maximum
        outside_R, gidx_Rk = gmax_Rj[:, k], gidx_Rj[:, :k].contiguous()
        cand_RC = groups_RGS.gather(1, gidx_Rk[:, :, None].expand(R, k, _GROUP)).view(R, -1)
        vals_Rj, cpos_Rj = cand_RC.topk(k + 1, dim=1)
        pos_Rj = gidx_Rk.gather(1, cpos_Rj // _GROUP) * _GROUP + cpos_Rj % _GROUP
        tied_R = outside_R >= vals_Rj[:, k - 1]
    else:
        vals_Rj, pos_Rj = pre_RM.topk(k + 1, dim=1)
        tied_R = torch.zeros(R, dtype=torch.bool, device=pre_RM.device)
    tied_R |= vals_Rj[:, k] == vals_Rj[:, k - 1]
    vals_Rk, pos_Rk = vals_Rj[:, :k].contiguous(), pos_Rj[:, :k].contiguous()
    if bool(tied_R.any()):
        rows_T = tied_R.nonzero().squeeze(1)
        if key_RM is None:
            _first_ties(pre_RM, gmax_RG, rows_T, vals_Rk, pos_Rk)
        else:
            sub_TM = pre_RM[rows_T]
            by_key_TM = key_RM[rows_T].sort(dim=1, stable=True).indices
            order_TM = sub_TM.gather(1, by_key_TM).sort(dim=1, descending=True, stable=True)[1]
            order_TM = by_key_TM.gather(1, order_TM)
            pos_Rk[rows_T] = order_TM[:, :k]
            vals_Rk[rows_T] = sub_TM.gather(1, order_TM[:, :k])
    return vals_Rk, pos_Rk


def _first_ties(pre_RM: Tensor, gmax_RG: Tensor | None, rows_T: Tensor, vals_Rk: Tensor,
                pos_Rk: Tensor) -> None:
    """Redo the tied rows ``rows_T`` of a top-k (values descending) in place, under the rule
    "equal values: the smaller column first".

    A row's entries above its k-th value v are in every top-k, and its top-k holds ``need`` more
    entries equal to v: the first ``need`` columns equal to v. Only the columns equal to v are
    listed (from the groups whose maximum reaches v, when the group maxima ``gmax_RG`` are
    known), not the whole row sorted: a single row of a whole batch (dense BatchTopK, ~67M
    entries) would take tens of seconds to sort.
    """
    k = vals_Rk.shape[1]
    cut_T = vals_Rk[rows_T, k - 1]
    n_above_T = (vals_Rk[rows_T] > cut_T[:, None]).sum(dim=1)
    if gmax_RG is None:
        t_E, pos_E = (pre_RM[rows_T] == cut_T[:, None]).nonzero(as_tuple=True)
    else:  # ascending (row, group), then the column inside the group: ascending columns
        t_S, g_S = (gmax_RG[rows_T] >= cut_T[:, None]).nonzero(as_tuple=True)
        groups_SS = pre_RM.view(pre_RM.shape[0], -1, _GROUP)[rows_T[t_S], g_S]
        s_E, col_E = (groups_SS == cut_T[t_S, None]).nonzero(as_tuple=True)
        t_E, pos_E = t_S[s_E], g_S[s_E] * _GROUP + col_E
    first_T = torch.bincount(t_E, minlength=rows_T.numel()).cumsum(0)
    first_T = torch.cat([first_T.new_zeros(1), first_T[:-1]])  # offset of each row's first
    rank_E = torch.arange(t_E.numel(), device=t_E.device) - first_T[t_E]
    take_E = rank_E < (k - n_above_T)[t_E]
    t_E = t_E[take_E]
    pos_Rk[rows_T[t_E], n_above_T[t_E] + rank_E[take_E]] = pos_E[take_E]
    # the values there already equal v: positions n_above..k-1 of a descending top-k


def merge_topk(vals_RC: Tensor, idx_RC: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of per-block candidates (values and latent ids, ``C ≥ k`` per row) under the tie
    rule of :func:`ordered_topk` (equal values: the smaller latent id first) → (values, ids).

    Exact when each block contributed its own top-min(k, width) under the same rule: an entry
    of the row's top-k has fewer than k entries ahead of it in the row, so fewer than k in its
    block, so it is among that block's candidates.
    """
    vals_Rk, pos_Rk = ordered_topk(vals_RC, k, key_RM=idx_RC)
    return vals_Rk, idx_RC.gather(1, pos_Rk)


def keep_rank_share(keys_RK: Tensor, order_RK: Tensor, everyone_RWC: Tensor, k: int,
                    rank: int) -> Tensor:
    """Which of this rank's candidates belong to each row's top ``k`` over all ranks, under
    :func:`ordered_topk`'s rule, where ranks hold ascending ranges of the tie-break order (so
    among equal values a lower rank's entries come first) → (R, K) bool.

    ``keys_RK``: this rank's candidates per row (its own top-min(k, ·) under the same rule; pad
    with −inf), ``order_RK`` their tie-break order within the rank (e.g. local latent id),
    ``everyone_RWC``: every rank's candidate keys, gathered in rank order (C ≥ K; −inf pads).
    Entries above the row's cutoff (its k-th largest key) are kept; of those equal to it, the
    k minus the number above are, the lower ranks' first, then this rank's in ``order``. A
    rank's list can be cut short inside a run of ties only when that rank's ties alone fill the
    row, so the ranks above it keep none and the counts stay exact. No extra bytes exchanged.
    """
    R, K = keys_RK.shape
    if R == 0 or K == 0:
        return torch.zeros(R, K, dtype=torch.bool, device=keys_RK.device)
    cutoff_R1 = everyone_RWC.reshape(R, -1).topk(k, dim=1).values[:, -1:]
    n_above_R = (everyone_RWC > cutoff_R1[:, :, None]).sum(dim=(1, 2))
    ties_before_R = (everyone_RWC[:, :rank] == cutoff_R1[:, :, None]).sum(dim=(1, 2))
    quota_R1 = (k - n_above_R - ties_before_R).clamp(min=0)[:, None]  # this rank's ties
    tied_RK = keys_RK == cutoff_R1
    by_order_RK = order_RK.argsort(dim=1)
    tie_pos_RK = torch.empty_like(by_order_RK).scatter_(
        1, by_order_RK, tied_RK.gather(1, by_order_RK).long().cumsum(dim=1) - 1)
    return (keys_RK > cutoff_R1) | (tied_RK & (tie_pos_RK < quota_R1))
