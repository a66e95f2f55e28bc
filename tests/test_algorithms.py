"""Algorithm details checked against the papers with values where a plausible bug differs."""

import numpy as np
import pytest
import torch

from saelab.architectures.jumprelu import _JumpReLUFn, _StepFn
from saelab.architectures.ordered import ordered_prefix_loss, prefix_cdf
from saelab.data import ArrayFileSource
from saelab.registry import build, config_from_dict
from saelab.training import TrainConfig, Trainer
from tests.helpers import ctx, small_sae


def test_jumprelu_ste_gradients_at_theta_half():
    # θ = 0.5: the "−(1/ε)·K" bug (θ factor dropped) gives −10 here, the paper's −(θ/ε)·K −5.
    pre = torch.tensor([[0.0, 0.50, 0.52, 0.48]], requires_grad=True)
    theta = torch.full((4,), 0.5, requires_grad=True)
    _JumpReLUFn.apply(pre, theta, 0.1).sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([0.0, -5.0, -5.0, -5.0]))
    assert torch.equal(pre.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    theta2 = theta.detach().clone().requires_grad_(True)
    _StepFn.apply(pre.detach(), theta2, 0.1).sum().backward()
    assert torch.allclose(theta2.grad, torch.tensor([0.0, -10.0, -10.0, -10.0]))


def test_jumprelu_threshold_below_the_clamp_still_gets_gradient():
    sae = small_sae("jumprelu")
    with torch.no_grad():
        sae.threshold.fill_(-0.01)  # pushed below the 1e-6 floor by an optimiser step
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    out = sae.training_loss(x, ctx())
    out.total.backward()
    assert sae.threshold.grad is not None and float(sae.threshold.grad.abs().sum()) > 0
    assert torch.equal(sae.encode(x), (lambda p: p * (p > 1e-6))(sae.pre_acts(x)))


def test_gated_aux_loss_does_not_reach_the_decoder():
    sae = small_sae("gated")
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    out = sae.training_loss(x, ctx())
    out.parts["aux"].backward()
    assert sae.W_dec.grad is None or float(sae.W_dec.grad.abs().max()) == 0
    assert float(sae.W_enc.grad.abs().max()) > 0  # it does train the gate


def test_gated_l0_counts_nonzero_codes_not_open_gates():
    sae = small_sae("gated")
    with torch.no_grad():
        sae.b_mag.fill_(-5.0)  # gates open, magnitudes negative -> codes 0
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    out = sae.training_loss(x, ctx())
    codes = sae.encode(x)
    assert float(out.l0) == pytest.approx(float((codes != 0).sum(-1).float().mean()))
    assert torch.equal(out.fired_M, (codes != 0).any(0))
    assert float((sae._paths(x)[0] > 0).sum(-1).float().mean()) > float(out.l0) + 1


def brute_force_prefix_loss(x, idx, vals, W_dec, b_dec, p):
    B, M = x.shape[0], W_dec.shape[0]
    codes = torch.zeros(B, M, dtype=torch.float64).scatter(1, idx, vals.double())
    total = torch.zeros((), dtype=torch.float64)
    for ell in range(1, M + 1):
        recon = codes[:, :ell] @ W_dec[:ell].double() + b_dec.double()
        total += p[ell - 1] * (x.double() - recon).pow(2).sum(-1).mean()
    return total


@pytest.mark.parametrize("power,groups", [(0.0, None), (1.3, None), (0.5, [0.25, 0.25, 0.5])])
def test_ordered_prefix_loss_equals_the_sum_over_every_prefix(power, groups):
    g = torch.Generator().manual_seed(3)
    B, D, M, K = 7, 5, 24, 4
    x, W, b = torch.randn(B, D, generator=g), torch.randn(M, D, generator=g), torch.randn(D, generator=g)
    idx = torch.stack([torch.randperm(M, generator=g)[:K] for _ in range(B)])
    vals = torch.rand(B, K, generator=g)
    cdf = prefix_cdf(M, power, groups=groups)
    p = cdf[1:] - cdf[:-1]
    expected = brute_force_prefix_loss(x, idx, vals, W, b, p)
    got = ordered_prefix_loss(x, idx, vals, W, b, cdf)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_ordered_prefix_weights_keep_precision_at_65536_latents():
    M, power = 65536, 2.0
    cdf = prefix_cdf(M, power)
    assert cdf.dtype == torch.float64
    ell = torch.arange(1, M + 1, dtype=torch.float64)
    exact = ell.pow(-power) / ell.pow(-power).sum()
    weights = cdf[1:] - cdf[:-1]
    assert float(((weights - exact).abs() / exact).max()) < 1e-6
    sae = build(config_from_dict({"architecture": "ordered", "d_in": 4, "d_sae": 2048, "k": 2,
                                  "prefix_power": 1.0}).resolved())
    assert sae.cdf.dtype == torch.float64


def test_ordered_piecewise_groups_get_equal_mass():
    cdf = prefix_cdf(16, 0.0, groups=[0.25, 0.25, 0.5])
    assert torch.allclose(cdf[[4, 8, 16]], torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    p = cdf[1:] - cdf[:-1]
    assert torch.allclose(p[:4], torch.full((4,), 1 / 12, dtype=torch.float64))
    assert torch.allclose(p[8:], torch.full((8,), 1 / 24, dtype=torch.float64))


def test_batchtopk_threshold_first_value_and_ema():
    sae = small_sae("batchtopk")  # threshold_start_step = 0, beta 0.999 -> use 0.5 to see it
    sae.cfg.threshold_beta = 0.5
    sae.train()
    x1 = torch.randn(32, 16, generator=torch.Generator().manual_seed(4))
    x2 = torch.randn(32, 16, generator=torch.Generator().manual_seed(5))

    def batch_min(x):
        with torch.no_grad():
            pre = torch.relu(sae.pre_acts(x)).flatten()
            return float(pre.topk(4 * 32).values.min())

    m1 = batch_min(x1)
    sae.training_loss(x1, ctx(step=0))
    assert float(sae.threshold) == pytest.approx(m1, rel=1e-6)
    m2 = batch_min(x2)
    sae.training_loss(x2, ctx(step=1))
    assert float(sae.threshold) == pytest.approx(0.5 * m1 + 0.5 * m2, rel=1e-6)


def _acts(path, n=2048, d=16):
    rng = np.random.default_rng(0)
    np.save(path, (rng.standard_normal((n, d)) + 0.5).astype(np.float32))
    return path


def test_dead_counters_advance_and_reset_and_feed_auxk(tmp_path):
    cfg = config_from_dict({"architecture": "topk", "d_sae": 64, "k": 2})
    train = TrainConfig(total_tokens=64 * 20, batch_size=64, dead_after_tokens=64 * 2,
                        progress=False, init_samples=256, measure_peak=False)
    source = ArrayFileSource(_acts(tmp_path / "a.npy"))
    trainer = Trainer({"t": cfg}, train, source, tmp_path / "run")
    trainer.initialise()
    batches = source.batches(64)
    since = trainer.slots["t"].tokens_since_fired_M
    saw_auxk = False
    for _ in range(6):
        before = since.clone()
        _, outputs = trainer.train_step(next(batches))
        fired = outputs["t"].fired_M
        assert torch.equal(since[fired], torch.zeros_like(since[fired]))
        assert torch.equal(since[~fired], before[~fired] + 64)
        saw_auxk |= "auxk" in outputs["t"].parts
    assert bool((~fired).any())  # with k = 2 of 64 some latents stay silent
    assert saw_auxk  # latents silent for 2 batches count as dead and AuxK runs


def test_paper_adam_beta1_defaults(tmp_path):
    cfgs = {n: config_from_dict({"architecture": n, "d_sae": 32, **({"k": 2} if n == "topk" else {})})
            for n in ("gated", "jumprelu", "topk")}
    train = TrainConfig(total_tokens=64 * 4, batch_size=64, progress=False, init_samples=128)
    trainer = Trainer(cfgs, train, ArrayFileSource(_acts(tmp_path / "a.npy")), tmp_path / "r")
    betas = {n: s.optimizer.param_groups[0]["betas"][0] for n, s in trainer.slots.items()}
    assert betas == {"gated": 0.0, "jumprelu": 0.0, "topk": 0.9}


def test_per_sae_lr_zero_is_refused_and_small_lr_is_kept(tmp_path):
    from saelab.config import ConfigError

    src = ArrayFileSource(_acts(tmp_path / "a.npy"))
    train = TrainConfig(total_tokens=64 * 4, batch_size=64, progress=False, init_samples=128)
    with pytest.raises(ConfigError, match="lr must be positive"):
        Trainer({"t": config_from_dict({"architecture": "topk", "k": 2, "lr": 0.0})}, train, src,
                tmp_path / "r0")
    trainer = Trainer({"t": config_from_dict({"architecture": "topk", "k": 2, "lr": 1e-5})},
                      train, src, tmp_path / "r1")
    assert trainer.slots["t"].optimizer.param_groups[0]["lr"] == 1e-5
