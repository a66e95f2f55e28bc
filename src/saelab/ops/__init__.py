"""Sparse compute path for TopK-family SAEs: sparse codes, fused encode+select, sparse decode.

Typical use inside an ``nn.Module`` with parameters W_enc (D, M), b_enc (M,), W_dec (M, D),
b_dec (D,)::

    codes, aux = topk_encode(x, self.W_enc, self.b_enc, self.b_dec, k, aux=(dead_mask, k_aux))
    x_hat = sparse_decode(codes, self.W_dec, self.b_dec)
    aux_hat = sparse_decode(aux, self.W_dec)  # AuxK reconstruction of (x − x_hat).detach()
"""

from saelab.ops.codes import SparseCodes
from saelab.ops.encode import (
    AuxSpec,
    Encoded,
    batch_topk_encode,
    threshold_encode,
    topk_encode,
)
from saelab.ops.kernels import (
    native_low_precision_matmul,
    release_workspace,
    row_topk,
    tune_cpu_allocator,
)
from saelab.ops.sparse import block_preacts, grouped_decode, sparse_decode, sparse_preacts

__all__ = [
    "AuxSpec",
    "Encoded",
    "SparseCodes",
    "batch_topk_encode",
    "block_preacts",
    "grouped_decode",
    "native_low_precision_matmul",
    "release_workspace",
    "row_topk",
    "sparse_decode",
    "sparse_preacts",
    "threshold_encode",
    "topk_encode",
    "tune_cpu_allocator",
]
