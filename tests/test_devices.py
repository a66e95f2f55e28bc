"""Training on a chosen device; the cheaper optimiser-side kernels equal the plain formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saelab.cli import main
from saelab.config import ConfigError
from saelab.data import ArrayFileSource
from saelab.training import Trainer
from saelab.training.device import available_devices, resolve_device, to_device_ahead
from saelab.training.trainer import make_adam, normalise_decoder, remove_parallel_gradient
from tests.test_trainer import final_tensors, make_acts, sae_configs, train_cfg


@pytest.mark.parametrize("device", available_devices())
def test_training_on_a_device_matches_cpu(tmp_path: Path, device: str) -> None:
    data = make_acts(tmp_path / "acts.npy")
    names = ["topk", "batchtopk"]
    cfg = dict(total_tokens=64 * 6, checkpoint_every=3, measure_peak=False)
    runs = {}
    for where in dict.fromkeys(["cpu", device]):
        t = Trainer(sae_configs(names), train_cfg(**cfg, device=where),
                    ArrayFileSource(data), tmp_path / where)
        assert all(p.device.type == torch.device(where).type
                   for s in t.saes.values() for p in s.parameters())
        t.fit()
        runs[where] = {n: final_tensors(tmp_path / where, n) for n in names}
    for name in names:
        for key, value in runs["cpu"][name].items():
            torch.testing.assert_close(runs[device][name][key], value, rtol=1e-4, atol=1e-5)


def test_bad_devices_are_named_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="use cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cli_reports_a_missing_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = make_acts(tmp_path / "acts.npy", n=256)
    rc = main(["train", "--data", str(data), "--arch", "topk", "--k", "4", "--device", "cuda",
               "--total-tokens", "128", "--batch-size", "64", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_batches_arrive_on_the_device_in_order() -> None:
    batches = [torch.full((2, 3), float(i)) for i in range(4)]
    for device in available_devices():
        got = list(to_device_ahead(iter(batches), torch.device(device)))
        assert [float(b[0, 0]) for b in got] == [0.0, 1.0, 2.0, 3.0]
        assert all(b.device.type == device for b in got)


def test_parallel_gradient_removal_and_renorm_match_the_plain_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter(torch.randn(50, 8, generator=gen) * 3)
    W.grad = torch.randn(50, 8, generator=gen)
    rows = W.detach() / W.detach().norm(dim=1, keepdim=True)
    want = W.grad - (W.grad * rows).sum(1, keepdim=True) * rows
    remove_parallel_gradient(W)
    torch.testing.assert_close(W.grad, want)
    assert (W.grad * W.detach()).sum(1).abs().max() < 1e-4  # tangent to each row
    normalise_decoder(W)
    torch.testing.assert_close(W.detach().norm(dim=1), torch.ones(50))


def test_adam_updates_a_latents_major_matrix_in_place_bit_identically() -> None:
    """A column-major W_enc (and its gradient and moments) reaches the fused kernel as its
    contiguous transpose: the same result as Adam on a row-major copy, with no copy of the
    matrix made during the step (the kernel copies non-contiguous tensors)."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(2)
    base = torch.randn(64, 12, generator=gen)
    lm = torch.nn.Parameter(base.clone().t())  # (12, 64), latents-major memory
    rm = torch.nn.Parameter(base.clone().t().contiguous())
    opt_lm = make_adam([lm], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    opt_rm = torch.optim.Adam([rm], lr=1e-2, foreach=False)
    for step in range(4):
        g = torch.randn(64, 12, generator=gen)
        lm.grad, rm.grad = g.clone().t(), g.t().contiguous()
        if step < 3:
            opt_lm.step()
        else:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                opt_lm.step()
            copied = sum(e.cpu_memory_usage for e in prof.events()
                         if e.name in ("aten::contiguous", "aten::clone"))
            assert copied == 0, f"the step copied {copied} bytes"
        opt_rm.step()
    assert lm.stride() == (1, 12) and opt_lm.state[lm]["exp_avg"].stride() == (1, 12)
    torch.testing.assert_close(lm.detach(), rm.detach(), rtol=1e-6, atol=1e-7)


def test_fused_adam_matches_the_reference_adam() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(30, 7, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    fused = make_adam([a], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    plain = torch.optim.Adam([b], lr=1e-2, foreach=False)
    for _ in range(5):
        g = torch.randn(30, 7, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(a, b)
