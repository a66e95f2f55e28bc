"""`saelab sweep`: config checks (fast) and a local PBT sweep on Ray Tune that exploits at
least once and resumes after an interruption (slow: it starts Ray twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from saelab.config import ConfigError
from saelab.sweep.config import apply_params, load_sweep_file

SWEEP = """
out = "runs/pbt"
[data]
path = "acts.npy"
[train]
total_tokens = 1024
batch_size = 64
lr_warmup_steps = 0
lr_decay_start = 1.0
init_samples = 256
checkpoint_every = 0
progress = false
measure_peak = false
[saes.sae]
architecture = "topk"
d_sae = 32
k = 3
[sweep]
search = "pbt"
metric = "mse"
num_samples = 2
report_every = 8
num_cpus = 2
[sweep.params]
"train.lr" = {loguniform = [1e-5, 3e-2]}
[sweep.pbt]
quantile_fraction = 0.5
"""


def write_sweep(folder: Path, text: str = SWEEP) -> Path:
    gen = np.random.default_rng(0)
    feats = gen.normal(size=(24, 8))
    codes = gen.random((512, 24)) * (gen.random((512, 24)) > 0.85)
    np.save(folder / "acts.npy", (codes @ feats).astype(np.float32))
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def test_sweep_file_is_checked(tmp_path: Path) -> None:
    sf = load_sweep_file(write_sweep(tmp_path))
    assert Path(sf.run.data.path).is_absolute() and sf.sae_name == "sae"
    run = apply_params(sf.run.to_dict(), "sae", {"train.lr": 0.01, "sae.k": 5})
    assert run["train"]["lr"] == 0.01 and run["saes"]["sae"]["k"] == 5
    bad = {
        '"sae.d_sae" = [16, 32]': "changes the SAE's shape",
        '"train.nope" = [1, 2]': "'train.OPTION' or 'sae.OPTION'",
        '"train.lr" = {normal = [0, 1]}': "give a list of values",
    }
    for line, message in bad.items():
        text = SWEEP.replace('"train.lr" = {loguniform = [1e-5, 3e-2]}', line)
        with pytest.raises(ConfigError, match=message):
            load_sweep_file(write_sweep(tmp_path, text))


def test_search_space_per_search_kind() -> None:
    pytest.importorskip("ray.tune")
    from ray.tune.search.sample import Categorical, Float

    from saelab.sweep.config import tune_domain

    assert tune_domain([16, 32], "grid") == {"grid_search": [16, 32]}
    assert isinstance(tune_domain([16, 32], "random"), Categorical)
    lr = tune_domain({"loguniform": [1e-4, 1e-2]}, "pbt")
    assert isinstance(lr, Float) and 1e-4 <= lr.sample() <= 1e-2


def _sweep(folder: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    return subprocess.Popen([sys.executable, "-m", "saelab.cli", "sweep", "sweep.toml"],
                            cwd=folder, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.slow
def test_local_pbt_sweep_exploits_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    write_sweep(tmp_path)
    out = tmp_path / "runs" / "pbt"
    # First run: interrupt it (Ctrl-C) once PBT has exploited, as a user stopping a sweep.
    first = _sweep(tmp_path)
    deadline = time.time() + 900  # generous: Ray starts slowly on a busy 2-core machine
    while time.time() < deadline and first.poll() is None:
        if list(out.glob("trials/*/pbt_exploits.jsonl")):
            first.send_signal(signal.SIGINT)
            break
        time.sleep(0.5)
    try:
        first.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # Ray is saving its state: a second Ctrl-C skips that
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=180)
    assert list(out.glob("trials/*/pbt_exploits.jsonl")), "PBT never exploited"
    # The same command resumes and finishes the sweep.
    second = _sweep(tmp_path)
    stdout, stderr = second.communicate(timeout=900)
    assert second.returncode == 0, stderr[-3000:]
    assert "resuming the sweep" in stderr
    results = json.loads((out / "sweep_results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 2 and all(t["step"] == 16 and t["status"] == "done" for t in trials)
    assert sum(t["exploits"] for t in trials) >= 1
    exploits_file = next(out.glob("trials/*/pbt_exploits.jsonl"))
    exploit = json.loads(exploits_file.read_text().splitlines()[0])
    assert exploit["step"] == 8 and exploit["from_trial"] in {t["trial"] for t in trials}
    # The exploiting trial continued from the donor's weights: its step-8 checkpoint is theirs.
    weights = "checkpoints/step_000000008/sae.sae.safetensors"
    donor = out / "trials" / exploit["from_trial"]
    assert (exploits_file.parent / weights).read_bytes() == (donor / weights).read_bytes()
    assert (out / "sweep_plot.png").stat().st_size > 1000
    assert "Best trial" in stdout and all((out / "trials" / t["trial"] / "final" / "sae").is_dir()
                                          for t in trials)
