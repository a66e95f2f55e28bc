"""The dense reference paths (``sparse_kernels = false``) select exactly what the sparse path
selects, ties included: equal values go to the smaller latent id (BatchTopK: the smaller row,
then the smaller latent id), the rule every selection in saelab follows (docs/speed.md).

Inputs are small integers, so every pre-activation is an exact integer and equal values are
common at the cut.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import Tensor

from saelab.architectures.base import SAE, StepContext
from saelab.architectures.batchtopk import batch_topk_codes
from saelab.architectures.topk import topk_codes, topk_entries
from saelab.ops import batch_topk_encode, topk_encode
from saelab.registry import build
from tests.helpers import small_sae

B, D, M = 64, 8, 512  # 512 latents: the two-stage selection runs for k ≤ 4 per row
ARCHS = ["topk", "batchtopk", "matryoshka", "ordered"]


def integer_sae(name: str, k: int, seed: int = 0) -> SAE:
    sae = small_sae(name, d_in=D, d_sae=M, seed=seed)
    sae = build(dataclasses.replace(sae.cfg, k=k))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randint(-1, 2, (D, M), generator=gen).float())
        sae.b_enc.copy_(torch.randint(-2, 3, (M,), generator=gen).float())
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.randn(M, D, generator=gen) / D**0.5)
    return sae


def integer_acts(seed: int = 1) -> Tensor:
    return torch.randint(-1, 2, (B, D), generator=torch.Generator().manual_seed(seed)).float()


def rule_codes(pre_BM: Tensor, n_keep: int, per_row: bool) -> Tensor:
    """The tie rule spelled out: a stable descending sort (equal values keep row-major order),
    the first n_keep, ReLU."""
    flat = pre_BM if per_row else pre_BM.reshape(1, -1)
    order = flat.sort(dim=1, descending=True, stable=True).indices[:, :n_keep]
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter(1, order, True)
    return (flat.clamp_min(0) * keep).view_as(pre_BM)


@pytest.mark.parametrize("k", [3, 4.5])
def test_dense_batch_topk_codes_follow_the_tie_rule(k: float) -> None:
    sae = integer_sae("batchtopk", k=4)
    x = integer_acts()
    pre = sae.pre_acts(x).detach()
    n_keep = round(B * k)
    cut = pre.flatten().sort(descending=True).values[n_keep - 1]
    assert cut > 0 and int((pre == cut).sum()) > 10  # the cut falls inside a large run of ties
    want = rule_codes(pre, n_keep, per_row=False)
    assert torch.equal(batch_topk_codes(pre, k), want)
    enc = batch_topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, k)
    assert torch.equal(enc.codes.to_dense().detach(), want)


@pytest.mark.parametrize("k", [3, 16])  # 3: two-stage row selection, 16: plain
def test_dense_topk_codes_follow_the_tie_rule(k: int) -> None:
    sae = integer_sae("topk", k=k)
    x = integer_acts()
    pre = sae.pre_acts(x).detach()
    want = rule_codes(pre, k, per_row=True)
    assert torch.equal(topk_codes(pre, k), want)
    assert torch.equal(sae.encode(x).detach(), want)
    enc = topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, k)
    assert torch.equal(enc.codes.to_dense().detach(), want)
    rows, idx, vals = sae.encode_entries(x)
    sparse_want = want.to_sparse_coo().coalesce()
    assert torch.equal(torch.stack([rows, idx]), sparse_want.indices())
    assert torch.equal(vals.detach(), sparse_want.values())


def run(sae: SAE, x: Tensor, dead: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    sae.train()
    sae.zero_grad()
    out = sae.training_loss(x, StepContext(step=3, total_steps=10, dead_mask_M=dead))
    out.total.backward()
    parts = {name: value.detach() for name, value in out.parts.items()}
    parts["fired"] = out.fired_M.float()
    parts["l0"] = out.l0
    return parts, {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("with_dead", [False, True])
def test_dense_training_step_equals_sparse_under_ties(name: str, with_dead: bool) -> None:
    sae = integer_sae(name, k=3)
    dense = build(dataclasses.replace(sae.cfg, sparse_kernels=False))
    dense.load_state_dict(copy.deepcopy(sae.state_dict()))
    x = integer_acts()
    dead = None
    if with_dead:
        dead = torch.zeros(M, dtype=torch.bool)
        dead[::5] = True
    parts_s, grads_s = run(sae, x, dead)
    parts_d, grads_d = run(dense, x, dead)
    assert parts_s.keys() == parts_d.keys()
    for key in parts_s:
        torch.testing.assert_close(parts_d[key], parts_s[key], rtol=1e-6, atol=1e-6, msg=key)
    for param in grads_s:
        torch.testing.assert_close(grads_d[param], grads_s[param], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, p=param: f"{name}: grad of {p}: {m}")


def test_dense_topk_keeps_leading_dimensions() -> None:
    # a model's (batch, sequence, latents) pre-activations, as steering encodes them
    pre = torch.randint(-3, 4, (2, 5, 40)).float()
    vals, idx = topk_entries(pre, 4)
    assert idx.shape == (2, 5, 4)
    flat_vals, flat_idx = topk_entries(pre.reshape(10, 40), 4)
    assert torch.equal(idx.reshape(10, 4), flat_idx) and torch.equal(vals.reshape(10, 4), flat_vals)
