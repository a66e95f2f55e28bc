"""Sparse compute path for TopK-family SAEs: sparse codes, fused encode+select, sparse decode.

Only the dense encoder product ``(x − b_dec) @ W_enc`` costs O(B·M·D); selection, decoding and
every backward pass cost O(nnz·D). Typical use inside an ``nn.Module`` with parameters
W_enc (D, M), b_enc (M,), W_dec (M, D), b_dec (D,)::

    codes, aux = topk_encode(x, self.W_enc, self.b_enc, self.b_dec, k, aux=(dead_mask, k_aux))
    x_hat = sparse_decode(codes, self.W_dec, self.b_dec)
    mse = (x - x_hat).pow(2).sum(-1).mean()
    aux_hat = sparse_decode(aux, self.W_dec)  # AuxK: reconstructs (x − x_hat).detach()
    fired = codes.fired_mask()  # for dead-latent bookkeeping

``batch_topk_encode`` returns CSR codes (variable count per row), ``threshold_encode`` serves
JumpReLU / BatchTopK inference, and ``grouped_decode`` gives Matryoshka prefix partials in one
pass. On CPU, call ``tune_cpu_allocator()`` once per training process; pass
``matmul_dtype=torch.bfloat16`` only where ``native_low_precision_matmul()`` is True.
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
    sparse_autocast,
    tune_cpu_allocator,
)
from saelab.ops.sparse import (
    block_preacts,
    encoder_preacts,
    grouped_decode,
    sparse_decode,
    sparse_preacts,
)

__all__ = [
    "AuxSpec",
    "Encoded",
    "SparseCodes",
    "batch_topk_encode",
    "block_preacts",
    "encoder_preacts",
    "grouped_decode",
    "native_low_precision_matmul",
    "release_workspace",
    "row_topk",
    "sparse_autocast",
    "sparse_decode",
    "sparse_preacts",
    "threshold_encode",
    "topk_encode",
    "tune_cpu_allocator",
]
