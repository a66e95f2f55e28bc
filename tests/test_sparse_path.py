"""The sparse training path of every TopK-family architecture equals its dense reference."""

import copy
import dataclasses

import pytest
import torch

from saelab.architectures.base import StepContext
from saelab.ops import native_low_precision_matmul
from saelab.registry import build
from saelab.training.device import available_devices
from tests.helpers import small_sae

SPARSE_ARCHS = ["topk", "batchtopk", "matryoshka", "ordered"]


def twin(sae, **changes):
    other = build(dataclasses.replace(sae.cfg, **changes))
    other.load_state_dict(copy.deepcopy(sae.state_dict()))
    return other


def run(sae, x, dead):
    sae.train()
    sae.zero_grad()
    out = sae.training_loss(x, StepContext(step=3, total_steps=10, dead_mask_M=dead))
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    return out, grads


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("name", SPARSE_ARCHS)
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_loss_and_every_gradient_match_dense(name, with_dead, device):
    sae = small_sae(name, d_in=16, d_sae=48, seed=4).to(device)
    assert sae.cfg.sparse_kernels
    dense = twin(sae, sparse_kernels=False).to(device)
    x = (torch.randn(64, 16, generator=torch.Generator().manual_seed(9)) * 2).to(device)
    dead = torch.zeros(48, dtype=torch.bool, device=device)
    if with_dead:
        dead[::3] = True
    out_s, grads_s = run(sae, x, dead)
    out_d, grads_d = run(dense, x, dead)
    torch.testing.assert_close(out_s.total, out_d.total, rtol=1e-5, atol=1e-5)
    assert out_s.parts.keys() == out_d.parts.keys()
    assert ("auxk" in out_s.parts) == with_dead
    for key in out_s.parts:
        torch.testing.assert_close(out_s.parts[key], out_d.parts[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_s.l0, out_d.l0)
    assert torch.equal(out_s.fired_M, out_d.fired_M)
    for param in grads_d:
        torch.testing.assert_close(grads_s[param], grads_d[param], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, p=param: f"{name}: grad of {p} differs: {m}")
    if name in ("batchtopk", "matryoshka"):
        torch.testing.assert_close(sae.threshold, dense.threshold)


@pytest.mark.parametrize("name", SPARSE_ARCHS)
def test_bf16_encoder_product_stays_close(name):
    sae = small_sae(name, d_in=32, d_sae=96, seed=2)
    if native_low_precision_matmul():
        bf16 = twin(sae, matmul_dtype="bfloat16")
    else:  # a CPU without native bf16 GEMM: the user is told it will be slower
        with pytest.warns(UserWarning, match="no native bf16"):
            bf16 = twin(sae, matmul_dtype="bfloat16")
    x = torch.randn(128, 32, generator=torch.Generator().manual_seed(1))
    out32, _ = run(sae, x, None)
    out16, _ = run(bf16, x, None)
    t16, t32 = float(out16.total.detach()), float(out32.total.detach())
    assert abs(t16 - t32) / t32 < 0.02
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # fp32 master weights


def test_sparse_flop_model_is_encoder_dominated():
    sae = small_sae("topk", d_in=768, d_sae=16384)
    dense = twin(sae, sparse_kernels=False)
    assert sae.matmul_flops_per_token() < 0.25 * dense.matmul_flops_per_token()
