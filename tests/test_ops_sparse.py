"""The sparse compute path must match the dense reference: values, losses and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from saelab.ops import (
    SparseCodes,
    batch_topk_encode,
    block_preacts,
    grouped_decode,
    row_topk,
    sparse_decode,
    sparse_preacts,
    threshold_encode,
    topk_encode,
)
from saelab.ops.encode import _AuxSelector, _Preacts
from saelab.ops.kernels import block_support
from saelab.ops.reference import (
    dense_aux_topk,
    dense_batch_topk,
    dense_preacts,
    dense_threshold,
    dense_topk,
)
from saelab.ops.sparse import encoder_preacts

B, D, M, K = 64, 32, 256, 8
ATOL = 1e-5
# AuxK settings (dead every n-th latent, k_aux) hitting each selection strategy at M=256.
AUX_MODES = {"block": (5, 6), "gather": (16, 1), "mask": (3, 4)}
AuxArg = tuple[int, int] | None


def make_params(
    seed: int = 0, dtype: torch.dtype = torch.float32, b_enc_shift: float = 0.0,
    latents_major: bool = False,
) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(M, D, generator=gen, dtype=dtype)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    W_enc = torch.randn(D, M, generator=gen, dtype=dtype) / D**0.5
    if latents_major:  # the layout TopK-family SAEs store W_enc in (column-major)
        W_enc = W_enc.t().contiguous().t()
    return {
        "x": torch.randn(B, D, generator=gen, dtype=dtype),
        "W_enc": W_enc.requires_grad_(),
        "b_enc": (0.1 * torch.randn(M, generator=gen, dtype=dtype) + b_enc_shift).requires_grad_(),
        "W_dec": W_dec.requires_grad_(),
        "b_dec": (0.1 * torch.randn(D, generator=gen, dtype=dtype)).requires_grad_(),
    }


def dead_mask(every: int = 5) -> Tensor:
    mask = torch.zeros(M, dtype=torch.bool)
    mask[::every] = True
    return mask


def loss_from(x: Tensor, x_hat: Tensor, aux_hat: Tensor | None) -> Tensor:
    err = x - x_hat
    loss = err.pow(2).sum(-1).mean()
    if aux_hat is not None:
        loss = loss + (err.detach() - aux_hat).pow(2).sum(-1).mean() / 32
    return loss


def sparse_loss(p: dict[str, Tensor], batch: bool, k: int, aux: AuxArg, **kw: object) -> Tensor:
    encode = batch_topk_encode if batch else topk_encode
    spec = (dead_mask(aux[0]), aux[1]) if aux else None
    codes, aux_codes = encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], k, aux=spec, **kw)  # type: ignore[arg-type]
    x_hat = sparse_decode(codes, p["W_dec"], p["b_dec"])
    aux_hat = sparse_decode(aux_codes, p["W_dec"]) if aux_codes is not None else None
    return loss_from(p["x"], x_hat, aux_hat)


def dense_loss(p: dict[str, Tensor], batch: bool, k: int, aux: AuxArg) -> Tensor:
    pre = dense_preacts(p["x"], p["W_enc"], p["b_enc"], p["b_dec"])
    codes = dense_batch_topk(pre, k) if batch else dense_topk(pre, k)
    x_hat = codes @ p["W_dec"] + p["b_dec"]
    aux_hat = dense_aux_topk(pre, dead_mask(aux[0]), aux[1]) @ p["W_dec"] if aux else None
    return loss_from(p["x"], x_hat, aux_hat)


PARAM_NAMES = ["W_enc", "b_enc", "W_dec", "b_dec"]


def grads(loss: Tensor, p: dict[str, Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, [p[n] for n in PARAM_NAMES]))


def assert_same_loss_and_grads(sparse: Tensor, dense: Tensor, p: dict[str, Tensor]) -> None:
    torch.testing.assert_close(sparse, dense, atol=ATOL, rtol=1e-5)
    for name, gs, gd in zip(PARAM_NAMES, grads(sparse, p), grads(dense, p), strict=True):
        scale = max(1.0, float(gd.abs().max()))  # fp32 summation order differs between paths
        torch.testing.assert_close(gs, gd, atol=ATOL * scale, rtol=1e-4, msg=f"grad of {name}")


# ----- SparseCodes --------------------------------------------------------------------------


def test_sparse_codes_fixed_k_roundtrip() -> None:
    vals = torch.tensor([[1.0, 0.0], [2.0, 3.0], [0.0, 0.0]])
    idx = torch.tensor([[4, 1], [0, 4], [2, 3]])
    codes = SparseCodes.from_fixed_k(vals, idx, n_latents=5)
    assert codes.n_rows == 3 and codes.nnz == 6 and codes.k == 2
    assert codes.offsets.tolist() == [0, 2, 4, 6]
    dense = codes.to_dense()
    assert dense.shape == (3, 5)
    assert dense[1].tolist() == [2.0, 0.0, 0.0, 0.0, 3.0]
    assert codes.l0_per_row().tolist() == [1, 2, 0]
    assert codes.fired_mask().tolist() == [True, False, False, False, True]
    assert codes.fired_counts().tolist() == [1, 0, 0, 0, 2]
    assert torch.equal(codes.values_BK, vals) and torch.equal(codes.indices_BK, idx)
    ordered = codes.sorted_by_latent()
    assert ordered.indices_BK.tolist() == [[1, 4], [0, 4], [2, 3]]
    assert torch.equal(ordered.to_dense(), dense)


def test_sparse_codes_from_dense_filter_and_empty() -> None:
    dense = torch.tensor([[0.0, 1.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.5]])
    codes = SparseCodes.from_dense(dense)
    assert codes.k is None and codes.offsets.tolist() == [0, 2, 2, 4]
    assert torch.equal(codes.to_dense(), dense)
    assert codes.l0_per_row().tolist() == [2, 0, 2]
    unordered = SparseCodes(codes.values.flip(0), codes.indices.flip(0), codes.offsets, 4)
    assert unordered.sorted_by_latent().indices.tolist() == [0, 3, 1, 3]  # sorted within rows
    first_two = codes.latent_range(0, 2)
    assert torch.equal(first_two.to_dense(), dense * torch.tensor([1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        _ = codes.values_BK
    empty = SparseCodes.from_fixed_k(torch.empty(3, 0), torch.empty(3, 0, dtype=torch.long), 4)
    assert empty.offsets.tolist() == [0, 0, 0, 0]
    assert torch.equal(sparse_decode(empty, torch.randn(4, 2)), torch.zeros(3, 2))


# ----- selection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "cols", "k"), [(7, 1024, 5), (7, 1024, 8), (5, 100, 7), (3, 64, 64)]
)
def test_row_topk_matches_torch(rows: int, cols: int, k: int) -> None:
    pre = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
    vals, idx = row_topk(pre, k)
    assert torch.equal(pre.gather(1, idx), vals)
    expected = pre.topk(k, dim=1).values
    torch.testing.assert_close(vals.sort(1, descending=True).values, expected, atol=0, rtol=0)


# ----- TopK / BatchTopK vs dense: loss and every gradient --------------------------------------


@pytest.mark.parametrize("latents_major", [False, True], ids=["row_major", "latents_major"])
@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch_topk"])
@pytest.mark.parametrize("aux_mode", [None, *AUX_MODES])
def test_encode_decode_matches_dense(batch: bool, aux_mode: str | None,
                                     latents_major: bool) -> None:
    p = make_params(latents_major=latents_major)
    aux = AUX_MODES[aux_mode] if aux_mode else None
    # Small chunks exercise the chunk loop; few candidates exercise the BatchTopK refill.
    extra = {"chunk_rows": 16} | ({"candidates": K // 2} if batch else {})
    sparse = sparse_loss(p, batch, K, aux, **extra)
    assert_same_loss_and_grads(sparse, dense_loss(p, batch, K, aux), p)


@pytest.mark.parametrize("latents_major", [False, True], ids=["row_major", "latents_major"])
def test_encoder_gradient_comes_in_the_weights_layout(latents_major: bool) -> None:
    """The sparse backward's W_enc gradient lands in W_enc's own layout (for a latents-major
    W_enc without a transposing copy), and equals the dense gradient."""
    p = make_params(latents_major=latents_major)
    sparse_loss(p, False, K, AUX_MODES["gather"]).backward()
    g_sparse = p["W_enc"].grad
    assert g_sparse is not None and g_sparse.stride() == p["W_enc"].stride()
    p["W_enc"].grad = None
    dense_loss(p, False, K, AUX_MODES["gather"]).backward()
    torch.testing.assert_close(g_sparse, p["W_enc"].grad, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize(
    ("mode", "block", "gather"),
    [("block", True, True), ("gather", False, True), ("mask", False, False)],
)
def test_aux_strategy_choice(mode: str, block: bool, gather: bool) -> None:
    every, k_aux = AUX_MODES[mode]
    p = make_params()
    pre = _Preacts(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], None, None)
    sel = _AuxSelector((dead_mask(every), k_aux), pre)
    assert (sel.block, sel.gather) == (block, gather)


@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch_topk"])
def test_codes_and_value_grads_match_dense(batch: bool) -> None:
    p = make_params(seed=3)
    encode = batch_topk_encode if batch else topk_encode
    codes, _ = encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], K)
    pre = dense_preacts(p["x"], p["W_enc"], p["b_enc"], p["b_dec"])
    dense_codes = dense_batch_topk(pre, K) if batch else dense_topk(pre, K)
    torch.testing.assert_close(codes.to_dense(), dense_codes, atol=ATOL, rtol=0)
    if batch:
        assert codes.k is None and int(codes.l0_per_row().sum()) == B * K
    # d loss / d values equals the dense code gradient at the kept entries.
    values = codes.values.detach().requires_grad_()
    target = torch.randn(B, D)
    loss = (sparse_decode(codes.with_values(values), p["W_dec"]) - target).pow(2).sum()
    (g_vals,) = torch.autograd.grad(loss, values)
    dense = codes.to_dense().detach().requires_grad_()
    (g_dense,) = torch.autograd.grad((dense @ p["W_dec"] - target).pow(2).sum(), dense)
    torch.testing.assert_close(
        g_vals, g_dense[codes.row_ids(), codes.indices], atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch_topk"])
def test_k_equals_m(batch: bool) -> None:
    p = make_params(seed=4)
    assert_same_loss_and_grads(
        sparse_loss(p, batch, M, AUX_MODES["block"]), dense_loss(p, batch, M, AUX_MODES["block"]), p
    )


@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch_topk"])
def test_all_negative_preacts(batch: bool) -> None:
    # b_enc so negative that every pre-activation is < 0: ReLU zeroes every kept value.
    p = make_params(seed=5, b_enc_shift=-100.0)
    s, d = sparse_loss(p, batch, K, AUX_MODES["mask"]), dense_loss(p, batch, K, AUX_MODES["mask"])
    assert_same_loss_and_grads(s, d, p)
    encode = batch_topk_encode if batch else topk_encode
    codes, aux = encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], K, aux=(dead_mask(), 6))
    assert int(codes.l0_per_row().sum()) == 0 and not codes.fired_mask().any()
    assert aux is not None and int(aux.l0_per_row().sum()) == 0


def test_batch_topk_skewed_rows_need_refill() -> None:
    # A few rows with huge norms win almost every slot: candidate lists must be re-expanded.
    p = make_params(seed=6)
    with torch.no_grad():
        p["x"][:3] *= 50.0
    s = sparse_loss(p, True, K, None, candidates=2)
    assert_same_loss_and_grads(s, dense_loss(p, True, K, None), p)


def test_aux_edge_cases() -> None:
    p = make_params(seed=7)
    args = (p["x"], p["W_enc"], p["b_enc"], p["b_dec"], K)
    _, aux = topk_encode(*args, aux=(torch.zeros(M, dtype=torch.bool), 6))
    assert aux is not None and aux.k == 0 and aux.nnz == 0
    # More dead latents than M/8 uses the in-place masking path; k_aux > n_dead is capped.
    many = dead_mask(every=2)
    _, aux = topk_encode(*args, aux=(many, 1000))
    assert aux is not None and aux.k == int(many.sum())
    assert bool(many[aux.indices].all())
    pre = dense_preacts(*args[:4])
    torch.testing.assert_close(aux.to_dense(), dense_aux_topk(pre, many, 1000), atol=ATOL, rtol=0)


# ----- gradcheck (float64) ------------------------------------------------------------------


def test_gradcheck_sparse_decode() -> None:
    gen = torch.Generator().manual_seed(8)
    values = torch.rand(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    idx = torch.randint(0, 6, (4, 3), generator=gen)
    W = torch.randn(6, 5, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()

    def fn(v: Tensor, W_: Tensor, b_: Tensor) -> Tensor:
        return sparse_decode(SparseCodes.from_fixed_k(v, idx, 6), W_, b_)

    assert torch.autograd.gradcheck(fn, (values, W, b))
    # Codes that densely fill few latents take the dense-block path.
    dense_idx = torch.stack([torch.randperm(6, generator=gen)[:3] for _ in range(4)])
    assert block_support(dense_idx.reshape(-1), 4, 6) is not None

    def block(v: Tensor, W_: Tensor) -> Tensor:
        return sparse_decode(SparseCodes.from_fixed_k(v, dense_idx, 6), W_)

    assert torch.autograd.gradcheck(block, (values, W))

    def grouped(v: Tensor, W_: Tensor) -> Tensor:
        return grouped_decode(SparseCodes.from_fixed_k(v, idx, 6), W_, [2, 3, 6])

    assert torch.autograd.gradcheck(grouped, (values, W))


def test_gradcheck_sparse_preacts() -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    W = torch.randn(5, 7, generator=gen, dtype=torch.float64).requires_grad_()
    b_enc = torch.randn(7, generator=gen, dtype=torch.float64).requires_grad_()
    b_dec = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()
    rows = torch.tensor([0, 0, 1, 2, 3, 3, 3, 1])
    idx = torch.tensor([1, 6, 1, 0, 2, 6, 1, 1])

    block = torch.tensor([5, 2])

    def fn(x_: Tensor, W_: Tensor, be: Tensor, bd: Tensor) -> Tensor:
        return sparse_preacts(x_, W_, be, bd, rows, idx)

    def both(x_: Tensor, W_: Tensor, be: Tensor, bd: Tensor) -> tuple[Tensor, Tensor]:
        return encoder_preacts(x_, W_, be, bd, rows, idx, None, block)

    inputs = (x, W, b_enc, b_dec)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(both, inputs)
    assert torch.autograd.gradcheck(
        lambda x_, W_, be, bd: block_preacts(x_, W_, be, bd, block), inputs
    )
    pre = dense_preacts(*inputs)
    torch.testing.assert_close(fn(*inputs), pre[rows, idx])
    torch.testing.assert_close(both(*inputs)[1], pre[:, block])


@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch_topk"])
def test_gradcheck_full_encode(batch: bool) -> None:
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    W_enc = torch.randn(4, 64, generator=gen, dtype=torch.float64).requires_grad_()
    b_enc = torch.randn(64, generator=gen, dtype=torch.float64).requires_grad_()
    b_dec = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_()
    W_dec = torch.randn(64, 4, generator=gen, dtype=torch.float64).requires_grad_()
    dead = torch.arange(64) % 3 == 0
    encode = batch_topk_encode if batch else topk_encode

    def fn(W_e: Tensor, b_e: Tensor, b_d: Tensor, W_d: Tensor) -> tuple[Tensor, Tensor]:
        codes, aux = encode(x, W_e, b_e, b_d, 3, aux=(dead, 2))
        assert aux is not None
        return sparse_decode(codes, W_d, b_d), sparse_decode(aux, W_d)

    assert torch.autograd.gradcheck(fn, (W_enc, b_enc, b_dec, W_dec))


# ----- mixed precision ----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch_topk"])
def test_bf16_matmul_close_to_fp32(batch: bool) -> None:
    p = make_params(seed=11)
    encode = batch_topk_encode if batch else topk_encode
    args = (p["x"], p["W_enc"], p["b_enc"], p["b_dec"], K)
    ref, _ = encode(*args)
    exact, _ = encode(*args, matmul_dtype=torch.bfloat16)
    rough, _ = encode(*args, matmul_dtype=torch.bfloat16, exact_values=False)
    assert exact.values.dtype == torch.float32
    # Exact mode: every kept value equals the fp32 pre-activation at that entry.
    pre = dense_preacts(*args[:4])
    torch.testing.assert_close(exact.values, pre[exact.row_ids(), exact.indices].relu())
    # bf16 selection may swap near-ties only: nearly the same set, nearly the same loss.
    # (Swapping two near-tied latents moves x_hat by ~v·(d_i − d_j), so compare losses.)
    overlap = (exact.to_dense() > 0) & (ref.to_dense() > 0)
    assert overlap.sum() >= 0.97 * (ref.to_dense() > 0).sum()
    mse_ref = loss_from(p["x"], sparse_decode(ref, p["W_dec"], p["b_dec"]), None)
    for codes in (exact, rough):
        mse = loss_from(p["x"], sparse_decode(codes, p["W_dec"], p["b_dec"]), None)
        assert abs((mse - mse_ref).item()) < 0.02 * mse_ref.item()
    aux = AUX_MODES["block"]
    loss = sparse_loss(p, batch, K, aux, matmul_dtype=torch.bfloat16)
    for g, g_ref in zip(grads(loss, p), grads(sparse_loss(p, batch, K, aux), p), strict=True):
        assert g.dtype == torch.float32
        assert (g - g_ref).norm() <= 0.15 * g_ref.norm()


# ----- thresholds, groups, input gradients --------------------------------------------------


@pytest.mark.parametrize("per_latent", [False, True], ids=["global", "per_latent"])
def test_threshold_encode_matches_dense(per_latent: bool) -> None:
    p = make_params(seed=12)
    args = (p["x"], p["W_enc"], p["b_enc"], p["b_dec"])
    thr: float | Tensor = torch.rand(M) * 0.6 if per_latent else 0.3
    codes = threshold_encode(*args, thr, chunk_rows=10)
    dense = dense_threshold(dense_preacts(*args), thr)
    torch.testing.assert_close(codes.to_dense(), dense, atol=ATOL, rtol=0)
    target = torch.randn(B, D)
    s = (sparse_decode(codes, p["W_dec"], p["b_dec"]) - target).pow(2).sum()
    d = (dense @ p["W_dec"] + p["b_dec"] - target).pow(2).sum()
    assert_same_loss_and_grads(s, d, p)
    with torch.no_grad():
        nograd = threshold_encode(*args, thr)
    assert not nograd.values.requires_grad and torch.equal(nograd.indices, codes.indices)


def test_grouped_decode_is_prefix_partials() -> None:
    p = make_params(seed=13)
    codes, _ = topk_encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], K)
    ends = [16, 64, M]
    partials = grouped_decode(codes, p["W_dec"], ends)
    assert partials.shape == (B, len(ends), D)
    for g, end in enumerate(ends):
        expected = sparse_decode(codes.latent_range(0, end), p["W_dec"])
        torch.testing.assert_close(partials.cumsum(1)[:, g], expected, atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError):
        grouped_decode(codes, p["W_dec"], [16, 64])


def test_input_gradient_matches_dense() -> None:
    p = make_params(seed=14)
    x = p["x"].clone().requires_grad_()
    codes, _ = topk_encode(x, p["W_enc"], p["b_enc"], p["b_dec"], K)
    (g_sparse,) = torch.autograd.grad(sparse_decode(codes, p["W_dec"]).pow(2).sum(), x)
    pre = dense_preacts(x, p["W_enc"], p["b_enc"], p["b_dec"])
    (g_dense,) = torch.autograd.grad((dense_topk(pre, K) @ p["W_dec"]).pow(2).sum(), x)
    torch.testing.assert_close(g_sparse, g_dense, atol=ATOL, rtol=1e-4)
