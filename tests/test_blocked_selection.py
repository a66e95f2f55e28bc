"""The column-blocked selection (the encoder product computed a block of latents at a time, each
row's top-k merged across blocks) selects exactly what whole rows select, ties included.

Inputs are small integers, so every pre-activation is an exact integer whatever order a matrix
product sums in, and equal values are common: the tie rule (equal values, the smaller latent id
first) decides many selections here.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from saelab.ops import batch_topk_encode, sparse_decode, topk_encode
from saelab.ops.kernels import ordered_topk

B, D, M = 48, 12, 1100  # 1100 latents: blocks of 256 leave a block of 76, of 7 one of 1
K = 16
# latents per block (each compared with whole rows): 256 (two-stage selection inside a block),
# 300 and 7 (neither divides the width; 7 is narrower than k)
BLOCKINGS = [256, 300, 7]


def integer_params(seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def ints(*shape: int, lim: int) -> Tensor:
        return torch.randint(-lim, lim + 1, shape, generator=gen).float()

    return {
        "x": ints(B, D, lim=2),
        "W_enc": ints(M, D, lim=2).t().requires_grad_(),  # latents-major, as TopK SAEs store it
        "b_enc": ints(M, lim=3).requires_grad_(),
        "b_dec": torch.zeros(D).requires_grad_(),
        "W_dec": (torch.randn(M, D, generator=gen) / D**0.5).requires_grad_(),
    }


def reference_topk(pre_BM: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The tie rule, spelled out: sort each row by value, descending, stably (equal values keep
    latent order), and keep the first k."""
    vals, idx = pre_BM.sort(dim=1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


def as_sets(vals_BK: Tensor, idx_BK: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's entries ordered by latent id, so selections compare as sets."""
    idx_sorted, order = idx_BK.sort(dim=1)
    return vals_BK.gather(1, order), idx_sorted


def dense_pre(p: dict[str, Tensor]) -> Tensor:
    return ((p["x"] - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).detach()


@pytest.mark.parametrize("k", [1, K, 40])
def test_ordered_topk_follows_the_tie_rule(k: int) -> None:
    pre = dense_pre(integer_params())
    assert (pre[:, None, :] == pre[:, :, None]).sum() > 10 * B * M  # many ties
    for width in (1024, 1000):  # the two-stage path (width % 32 == 0) and plain topk
        vals, idx = ordered_topk(pre[:, :width].contiguous(), k)
        want_vals, want_idx = reference_topk(pre[:, :width], k)
        assert torch.equal(as_sets(vals, idx)[1], as_sets(want_vals, want_idx)[1])
        assert torch.equal(vals, want_vals)  # values come out descending


@pytest.mark.parametrize("block_latents", BLOCKINGS)
@pytest.mark.parametrize("k", [K, 3])
def test_blocked_topk_selects_and_differentiates_like_whole_rows(block_latents: int,
                                                                 k: int) -> None:
    p = integer_params()
    want_vals, want_idx = as_sets(*reference_topk(dense_pre(p), k))
    grads = []
    for blocking in (0, block_latents):  # 0: whole rows (256-row chunks of all latents)
        codes, _ = topk_encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], k,
                               block_latents=blocking)
        vals, idx = as_sets(codes.values_BK.detach(), codes.indices_BK)
        assert torch.equal(idx, want_idx), f"block_latents={blocking}"
        assert torch.equal(vals, want_vals.clamp_min(0))
        loss = (p["x"] - sparse_decode(codes, p["W_dec"], p["b_dec"])).pow(2).sum()
        names = ["W_enc", "b_enc", "b_dec", "W_dec"]
        grads.append(torch.autograd.grad(loss, [p[n] for n in names]))
    for name, whole, blocked in zip(names, *grads, strict=True):
        torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-5 * float(whole.abs().max()), msg=name)


@pytest.mark.parametrize("block_latents", BLOCKINGS)
@pytest.mark.parametrize("every", [3, 50, 200])  # AuxK strategies: mask, gather, block
def test_blocked_auxk_selection_equals_whole_rows(block_latents: int, every: int) -> None:
    p = integer_params(1)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::every] = True
    k_aux = min(24, int(dead.sum()))
    pre = dense_pre(p).masked_fill(~dead, float("-inf"))
    want_vals, want_idx = as_sets(*reference_topk(pre, k_aux))
    for blocking in (0, block_latents):
        _, aux = topk_encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], K,
                             aux=(dead, k_aux), block_latents=blocking)
        assert aux is not None
        vals, idx = as_sets(aux.values_BK.detach(), aux.indices_BK)
        assert torch.equal(idx, want_idx), f"block_latents={blocking}"
        assert torch.equal(vals, want_vals.clamp_min(0))


@pytest.mark.parametrize("block_latents", BLOCKINGS)
def test_blocked_batch_topk_equals_whole_rows(block_latents: int) -> None:
    p = integer_params(2)
    pre = dense_pre(p)
    total = round(B * 4.5)
    # tie rule over the batch: larger value, then smaller row, then smaller latent id
    order = pre.flatten().sort(descending=True, stable=True).indices[:total]
    want = {(int(i) // M, int(i) % M) for i, v in zip(order, pre.flatten()[order], strict=True)
            if v > 0}
    # candidates=2: most rows' lists fill up, so the exact refill runs too
    for blocking in (0, block_latents):
        codes, _ = batch_topk_encode(p["x"], p["W_enc"], p["b_enc"], p["b_dec"], 4.5,
                                     candidates=2, block_latents=blocking)
        got = set(zip(codes.row_ids().tolist(), codes.indices.tolist(), strict=True))
        assert got == want, f"block_latents={blocking}"
