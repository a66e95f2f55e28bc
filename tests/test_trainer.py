import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saelab.config import ConfigError
from saelab.data import ArrayFileSource, DataError
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer, TrainingError
from tests.helpers import small_options

ARCHS_FOR_RESUME = ["topk", "batchtopk", "panneal", "jumprelu", "gated", "matryoshka", "ordered"]


def make_acts(path: Path, n: int = 4096, d: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((64, d))
    codes = (rng.random((n, 64)) < 0.08) * rng.random((n, 64))
    np.save(path, (codes @ feats + 0.5).astype(np.float32))
    return path


def sae_configs(names=ARCHS_FOR_RESUME):
    return {n: config_from_dict({k: v for k, v in small_options(n).items() if k != "d_in"})
            for n in names}


def train_cfg(**kw) -> TrainConfig:
    base = dict(total_tokens=64 * 40, batch_size=64, lr=1e-3, lr_warmup_steps=5,
                lr_decay_start=0.5, sparsity_warmup_steps=10, checkpoint_every=10,
                log_every=5, progress=False, dead_after_tokens=64 * 3, init_samples=512)
    base.update(kw)
    return TrainConfig(**base)


class StopAt:
    """A source that raises after `stop` batches, as if the process were killed."""

    def __init__(self, inner: ArrayFileSource, stop: int) -> None:
        self.inner, self.stop = inner, stop

    @property
    def d_in(self) -> int:
        return self.inner.d_in

    def sample(self, n):
        return self.inner.sample(n)

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        for i, b in enumerate(self.inner.batches(batch_size, start_batch), start=start_batch):
            if i >= self.stop:
                raise KeyboardInterrupt
            yield b


def final_tensors(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / name / "sae.safetensors"))


def test_resume_is_bit_identical(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    full = tmp_path / "full"
    Trainer(sae_configs(), train_cfg(), ArrayFileSource(data), full).fit()

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        Trainer(sae_configs(), train_cfg(), StopAt(ArrayFileSource(data), 25), part).fit()
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == [
        "step_000000010", "step_000000020"]
    Trainer(sae_configs(), train_cfg(), ArrayFileSource(data), part).fit()

    for name in ARCHS_FOR_RESUME:
        a, b = final_tensors(full, name), final_tensors(part, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"


def test_killed_cli_run_resumes_bit_identical(tmp_path):
    # Steps big enough (~ms) that the run is still going when the first checkpoint appears.
    data = make_acts(tmp_path / "acts.npy", n=8192, d=64)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "saelab.cli", "train", "--data", str(data), "--arch", "topk",
                "--k", "8", "--d-sae", "512", "--total-tokens", str(256 * 800), "--batch-size",
                "256", "--checkpoint-every", "100", "--log-every", "100", "--no-progress",
                "--init-samples", "512", "--out", str(out)]

    full = tmp_path / "full"
    subprocess.run(cmd(full), check=True, env=env, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(cmd(part), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((part / "checkpoints").glob("step_*")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (part / "final").exists(), "the run finished before it could be killed"
    subprocess.run(cmd(part), check=True, env=env, capture_output=True)
    a, b = final_tensors(full, "topk"), final_tensors(part, "topk")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nan_in_input_stops_with_step_and_keeps_checkpoint(tmp_path):
    arr = np.load(make_acts(tmp_path / "acts.npy"))
    src = ArrayFileSource(tmp_path / "acts.npy", shuffle=False)

    class Poisoned:
        d_in = src.d_in

        def sample(self, n):
            return src.sample(n)

        def batches(self, batch_size, start_batch=0):
            for i, b in enumerate(src.batches(batch_size, start_batch), start=start_batch):
                if i == 13:
                    b = b.clone()
                    b[3, 2] = float("nan")
                yield b

    assert np.isfinite(arr).all()
    with pytest.raises(TrainingError, match=r"step 13: input batch.*row 3, column 2.*step_000000010"):
        Trainer(sae_configs(["topk"]), train_cfg(), Poisoned(), tmp_path / "run").fit()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_000000010"]


def test_divergent_loss_names_step_and_cause(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    cfgs = {"relu": config_from_dict({"architecture": "relu", "d_sae": 32})}
    # An absurd learning rate overflows the weights within a few steps.
    with pytest.raises(TrainingError, match=r"step \d+: loss of SAE 'relu' is (nan|inf)"):
        Trainer(cfgs, train_cfg(lr=1e30, lr_warmup_steps=0), ArrayFileSource(data),
                tmp_path / "run").fit()


def test_nan_in_file_is_reported_before_training(tmp_path):
    arr = np.ones((100, 8), dtype=np.float32)
    arr[57, 5] = np.inf
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match="row 57, column 5"):
        ArrayFileSource(tmp_path / "bad.npy")


def test_width_mismatch_is_reported_before_training(tmp_path):
    data = make_acts(tmp_path / "acts.npy", d=16)
    cfgs = {"t": config_from_dict({"architecture": "topk", "d_in": 20, "k": 2})}
    with pytest.raises(ConfigError, match="d_in=20 but the data has width 16"):
        Trainer(cfgs, train_cfg(), ArrayFileSource(data), tmp_path / "run")


def test_resume_with_changed_config_is_refused(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    with pytest.raises(KeyboardInterrupt):
        Trainer(sae_configs(["topk"]), train_cfg(), StopAt(ArrayFileSource(data), 15),
                tmp_path / "run").fit()
    with pytest.raises(ConfigError, match=r"different config.*train\.lr"):
        Trainer(sae_configs(["topk"]), train_cfg(lr=5e-4), ArrayFileSource(data),
                tmp_path / "run").fit()


def test_outputs_log_and_final_folded_saes(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    out = tmp_path / "run"
    saes = Trainer(sae_configs(["topk", "relu"]), train_cfg(), ArrayFileSource(data), out).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["sae"] for r in records} == {"topk", "relu"}
    assert all(r["tokens_per_s"] > 0 and "explained_variance" in r for r in records)
    # The saved SAE works on raw activations: EV on the raw file must be reasonable.
    acts = torch.from_numpy(np.load(data))
    recon = saes["topk"](acts)
    ev = 1 - (acts - recon).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    assert ev > 0.3


def test_tensorboard_logging_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    data = make_acts(tmp_path / "acts.npy")
    Trainer(sae_configs(["topk"]), train_cfg(tensorboard=True, total_tokens=64 * 10),
            ArrayFileSource(data), tmp_path / "run").fit()
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
