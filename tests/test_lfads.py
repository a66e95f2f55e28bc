"""AutoLFADS (saelab.lfads): loss terms against hand values, coordinated dropout's stop-gradient,
exact resume, metrics, the NWB loader on a real NWB file, the CLI, and a two-worker PBT run on
Ray Tune that exploits once (slow: it starts Ray)."""

from __future__ import annotations

import json
import math
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.config import ConfigError
from saelab.lfads import trainer as trainer_module
from saelab.lfads.config import LFADSModelConfig, LFADSTrainConfig, SyntheticConfig
from saelab.lfads.data import SpikeData, synthetic
from saelab.lfads.losses import ar1_log_prob, gaussian_kl, poisson_nll
from saelab.lfads.metrics import co_bps, decoding_r2, latent_r2, rate_r2
from saelab.lfads.trainer import LFADSTrainer

TINY = dict(ic_enc_dim=8, ci_enc_dim=4, con_dim=4, co_dim=2, gen_dim=8, fac_dim=4)


def tiny_data(n_trials: int = 24, seed: int = 0) -> SpikeData:
    return synthetic(SyntheticConfig(n_trials=n_trials, n_test=8, n_neurons=8, n_heldout=2,
                                     n_bins=12, base_rate=40.0, seed=seed))


def tiny_train(**kw: object) -> LFADSTrainConfig:
    base: dict[str, object] = dict(steps=6, batch_size=8, eval_every=3, checkpoint_every=0,
                                   progress=False, kl_ramp_steps=4, l2_ramp_steps=4)
    return LFADSTrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_poisson_nll_against_hand_values() -> None:
    log_rates = torch.tensor([math.log(2.0), math.log(0.5), math.log(3.0)])
    counts = torch.tensor([3.0, 0.0, 1.0])
    expected = [2.0 - 3 * math.log(2.0) + math.log(6.0), 0.5, 3.0 - math.log(3.0)]
    assert poisson_nll(log_rates, counts).tolist() == pytest.approx(expected, abs=1e-6)


def test_gaussian_kl_against_hand_values() -> None:
    # KL(N(1, 2) || N(0, 1)) = ½(2 + 1 − 1 − ln 2); KL(N(0.5, 0.1) || N(0, 0.1)) = ½·0.25/0.1
    mean = torch.tensor([[1.0, 0.5]])
    logvar = torch.tensor([[math.log(2.0), math.log(0.1)]])
    prior_mean = torch.zeros(2)
    prior_logvar = torch.tensor([0.0, math.log(0.1)])
    expected = 0.5 * (2.0 - math.log(2.0)) + 0.5 * 0.25 / 0.1
    assert gaussian_kl(mean, logvar, prior_mean, prior_logvar).item() == pytest.approx(expected)
    assert gaussian_kl(mean, logvar, mean[0], logvar[0]).item() == pytest.approx(0.0, abs=1e-7)


def test_ar1_prior_log_prob_against_hand_values() -> None:
    # τ = 1 → α = e^-1; σ² = 1: log N(1; 0, 1) + log N(0.5; α, 1 − α²)
    u = torch.tensor([[[1.0], [0.5]]])
    alpha = math.exp(-1.0)

    def log_normal(x: float, mean: float, var: float) -> float:
        return -0.5 * (math.log(2 * math.pi * var) + (x - mean) ** 2 / var)

    expected = log_normal(1.0, 0.0, 1.0) + log_normal(0.5, alpha, 1 - alpha**2)
    got = ar1_log_prob(u, torch.tensor([0.0]), torch.tensor([0.0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_coordinated_dropout_sends_no_gradient_through_kept_entries(monkeypatch) -> None:
    data = tiny_data()
    trainer = LFADSTrainer(data, LFADSModelConfig(**TINY), tiny_train(cd_rate=0.5, sv_rate=0.2),
                           Path("unused"))
    masks, outputs, inputs = [], [], []
    real_cd, real_forward = trainer_module.coordinated_dropout, trainer.model.forward

    def spy_cd(counts, rate, generator=None):
        network_input, grad_mask = real_cd(counts, rate, generator)
        masks.append(grad_mask)
        inputs.append((counts, network_input))
        return network_input, grad_mask

    def spy_forward(x, sample=True):
        out = real_forward(x, sample)
        out.log_rates.retain_grad()
        outputs.append(out)
        return out

    monkeypatch.setattr(trainer_module, "coordinated_dropout", spy_cd)
    monkeypatch.setattr(trainer.model, "forward", spy_forward)
    idx = trainer.train_idx[:8]
    total, record = trainer.loss(idx, step=0)
    total.backward()
    grad = outputs[0].log_rates.grad
    dropped = masks[0].bool()
    sv = trainer.sv_mask[idx].bool()
    held_in_grad = grad[..., : data.n_in]
    assert torch.all(held_in_grad[~dropped] == 0), "gradient leaked through kept entries"
    assert torch.all(held_in_grad[sv] == 0), "gradient leaked through sample-validation entries"
    assert torch.all(held_in_grad[dropped & ~sv] != 0)
    assert torch.all(grad[..., data.n_in:] != 0)  # held-out neurons always train the readout
    # The reported loss still counts kept entries (only their gradient is stopped).
    counts, network_input = inputs[0]
    assert torch.all(network_input[dropped] == 0)
    assert torch.allclose(network_input[~dropped], counts[~dropped] / 0.5)
    nll = poisson_nll(outputs[0].log_rates, trainer.spikes[idx])
    full = (nll[..., : data.n_in] * (~sv)).sum() + nll[..., data.n_in:].sum()
    assert record["recon"] == pytest.approx(full.item() / nll.numel(), rel=1e-5)


def test_exact_resume(tmp_path: Path) -> None:
    data = tiny_data()
    straight = LFADSTrainer(data, LFADSModelConfig(**TINY), tiny_train(), tmp_path / "a")
    straight.fit()
    first = LFADSTrainer(data, LFADSModelConfig(**TINY), tiny_train(), tmp_path / "b")
    first.fit(until_step=3)
    torch.manual_seed(123)  # the resumed run must restore its own RNG state, not use this one
    resumed = LFADSTrainer(data, LFADSModelConfig(**TINY), tiny_train(), tmp_path / "b")
    resumed.fit()
    assert resumed.step == 6
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert lines_a == lines_b and len(lines_a) == 2
    # A different setting is refused rather than silently mixed into the run.
    with pytest.raises(ConfigError, match="different"):
        LFADSTrainer(data, LFADSModelConfig(**TINY), tiny_train(lr=0.1), tmp_path / "b").fit()


def test_metrics_on_known_cases() -> None:
    gen = np.random.default_rng(0)
    rates = gen.uniform(0.1, 2.0, size=(20, 10, 3))
    counts = gen.poisson(rates).astype(float)
    assert rate_r2(rates, rates) == pytest.approx(1.0)
    mean = np.broadcast_to(counts.mean((0, 1)), counts.shape)
    assert co_bps(mean, counts) == pytest.approx(0.0, abs=1e-9)
    assert co_bps(rates, counts) > 0.1  # the true rates beat a flat rate
    # hand value: one neuron, two bins, counts (1, 0), prediction (1, 0.5) vs mean (0.5, 0.5)
    c = np.array([[[1.0], [0.0]]])
    pred = np.array([[[1.0], [0.5]]])
    ll_pred = (1 * math.log(1.0) - 1.0) + (-0.5)
    ll_mean = (1 * math.log(0.5) - 0.5) + (-0.5)
    assert co_bps(pred, c) == pytest.approx((ll_pred - ll_mean) / math.log(2))
    latents = gen.normal(size=(30, 10, 2))
    mixing = gen.normal(size=(2, 4))
    factors = latents @ mixing + 3.0
    assert latent_r2(factors[:20], latents[:20], factors[20:], latents[20:]) == pytest.approx(1.0)
    assert decoding_r2(factors[:20], latents[:20], factors[20:], latents[20:]) > 0.99


def test_synthetic_data_and_file_round_trip(tmp_path: Path) -> None:
    for system in ("lorenz", "chaotic_rnn"):
        data = synthetic(SyntheticConfig(system=system, n_trials=20, n_test=5, n_neurons=6,
                                         n_heldout=2, n_bins=10))
        assert data.spikes.shape == (20, 10, 8) and data.test_spikes.shape == (5, 10, 8)
        assert data.rates.shape == data.spikes.shape and data.behavior.shape == (20, 10, 2)
        # spikes are Poisson draws of the rates: their mean tracks the mean rate
        assert abs(data.spikes.mean() - data.rates.mean()) < 0.2 * data.rates.mean() + 0.02
    loaded = SpikeData.load(data.save(tmp_path / "d.npz"))
    assert np.array_equal(loaded.test_rates, data.test_rates) and loaded.n_heldout == 2
    assert loaded.subset(5).spikes.shape[0] == 5 and loaded.subset(5).test_spikes.shape[0] == 5
    with pytest.raises(ConfigError, match="does not exist"):
        SpikeData.load(tmp_path / "missing.npz")


def test_nwb_loader_bins_a_real_nwb_file(tmp_path: Path) -> None:
    pytest.importorskip("pynwb")
    from datetime import datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    from saelab.lfads.nwb import NWBConfig, load_nwb

    nwb = NWBFile(session_description="test", identifier="lfads-test",
                  session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    nwb.add_trial_column("move_onset_time", "movement onset")
    for i in range(5):
        nwb.add_trial(start_time=float(i), stop_time=i + 0.5, move_onset_time=i + 0.1)
    gen = np.random.default_rng(0)
    spike_times = [np.sort(gen.uniform(0, 5, size=80)) for _ in range(4)]
    for times in spike_times:
        nwb.add_unit(spike_times=times)
    nwb.add_acquisition(TimeSeries(name="hand_vel", data=np.stack(
        [np.arange(5000.0), -np.arange(5000.0)], 1), unit="m/s", rate=1000.0, starting_time=0.0))
    path = tmp_path / "session.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)

    data = load_nwb(path, NWBConfig(bin_ms=50, align="move_onset_time", window_ms=300,
                                    behavior="hand_vel", test_share=0.0))
    assert data.spikes.shape == (5, 6, 4) and data.dt == pytest.approx(0.05)
    for trial in range(5):
        start = trial + 0.1
        for unit in range(4):
            expected = np.histogram(spike_times[unit], bins=start + 0.05 * np.arange(7))[0]
            assert data.spikes[trial, :, unit].tolist() == expected.tolist()
    # behaviour sampled at bin centres: 1000 samples/s of value t·1000
    assert data.behavior[0, 0, 0] == pytest.approx((0.1 + 0.025) * 1000, abs=1e-6)
    split = load_nwb(path, NWBConfig(bin_ms=100, n_heldout=1, test_share=0.4))
    assert len(split.spikes) == 3 and len(split.test_spikes) == 2 and split.n_heldout == 1
    with pytest.raises(ConfigError, match="no column 'nope'"):
        load_nwb(path, NWBConfig(align="nope"))


def test_cli_synth_train_eval(tmp_path: Path, capsys) -> None:
    from saelab.cli import main

    data = tmp_path / "d.npz"
    assert main(["lfads", "synth", "--out", str(data), "--n-trials", "24", "--n-test", "8",
                 "--n-neurons", "8", "--n-heldout", "2", "--n-bins", "12"]) == 0
    run = tmp_path / "run"
    args = ["lfads", "train", "--data", str(data), "--out", str(run), "--steps", "4",
            "--eval-every", "2", "--batch-size", "8", "--no-progress",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rate_r2" in out and "co_bps" in out and "Columns:" in out
    assert (run / "final" / "model.safetensors").exists()
    assert (run / "lfads_rates.png").stat().st_size > 5000
    report = json.loads((run / "lfads_eval.json").read_text())
    assert report["n_test_trials"] == 8 and math.isfinite(report["co_bps"])
    assert main(["lfads", "eval", str(run), "--data", str(data), "--out",
                 str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "lfads_eval.json").read_text()) == report
    assert main(["lfads", "train", "--out", str(run)]) == 2  # no data: a clear error


@pytest.mark.slow
def test_autolfads_two_workers_exploit_once(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    import ray

    from saelab.lfads.autolfads import AutoLFADSConfig, run_autolfads
    from saelab.lfads.config import LFADSRunConfig
    from saelab.sweep.config import PBTConfig

    data_path = tiny_data().save(tmp_path / "d.npz")
    run = LFADSRunConfig(data=str(data_path), model=LFADSModelConfig(**TINY),
                         train=tiny_train(checkpoint_every=0, eval_every=2))
    auto = AutoLFADSConfig(population=2, generations=2, steps_per_generation=2, num_cpus=2,
                           pbt=PBTConfig(quantile_fraction=0.5, resample_probability=0.0))
    out = tmp_path / "pbt"
    try:
        rows = run_autolfads(run, auto, out)
    finally:
        ray.shutdown()
    assert len(rows) == 2 and all(r["status"] == "done" and r["step"] == 4 for r in rows)
    exploit_files = list(out.glob("trials/*/pbt_exploits.jsonl"))
    assert len(exploit_files) == 1, "exactly one worker (the worse) should have exploited"
    exploit = json.loads(exploit_files[0].read_text().splitlines()[0])
    assert exploit["step"] == 2
    donor = out / "trials" / exploit["from_trial"]
    # The exploiting worker continued from the donor's step-2 weights...
    weights = "checkpoints/step_000000002/model.safetensors"
    assert (exploit_files[0].parent / weights).read_bytes() == (donor / weights).read_bytes()
    # ...with the donor's options perturbed by ×0.8 or ×1.2.
    donor_opts = json.loads((donor / "checkpoints/step_000000002/trainer.json").read_text())
    for name in ("lr", "kl_weight", "l2_weight"):
        ratio = exploit["new_options"][name] / donor_opts["train"][name]
        assert min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-6, (name, ratio)
    assert sum(r["exploits"] for r in rows) == 1
