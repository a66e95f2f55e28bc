"""Spiking data sets for LFADS: the ``SpikeData`` container (one ``.npz`` file, no pickles) and
synthetic data with ground truth, as in the LFADS papers (Lorenz-system or chaotic-RNN latents,
rates through a random readout, Poisson spikes, held-out neurons and test trials).

Arrays are ``[trials, time, channels]``; the last ``n_heldout`` channels are held-out neurons
(predicted by the model, never given to it as input). Rates are expected spikes per bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saelab.config import ConfigError
from saelab.io import atomic_write_bytes
from saelab.lfads.config import SyntheticConfig

#: arrays a SpikeData file may hold; ``spikes`` is required, the rest are ground truth / behaviour
ARRAYS = ("spikes", "rates", "latents", "behavior", "test_spikes", "test_rates", "test_latents",
          "test_behavior")


@dataclass
class SpikeData:
    spikes: np.ndarray  # [trials, time, n_in + n_heldout] counts (training pool)
    n_heldout: int = 0
    dt: float = 0.01
    rates: np.ndarray | None = None  # true rates per bin, same shape as spikes
    latents: np.ndarray | None = None  # [trials, time, latent_dim]
    behavior: np.ndarray | None = None  # [trials, time, behaviour_dim]
    test_spikes: np.ndarray | None = None
    test_rates: np.ndarray | None = None
    test_latents: np.ndarray | None = None
    test_behavior: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spikes.ndim != 3:
            raise ConfigError(f"spikes must be [trials, time, neurons], got shape "
                              f"{self.spikes.shape}")
        if not 0 <= self.n_heldout < self.spikes.shape[2]:
            raise ConfigError(f"n_heldout={self.n_heldout} must leave at least one input neuron "
                              f"of {self.spikes.shape[2]}")
        for name in ARRAYS[1:]:
            arr = getattr(self, name)
            ref = self.spikes if not name.startswith("test_") else self.test_spikes
            if arr is not None and (ref is None or arr.shape[:2] != ref.shape[:2]):
                raise ConfigError(f"{name} has shape {arr.shape}, which does not match its spikes")
        if np.any(self.spikes < 0) or not np.all(np.isfinite(self.spikes)):
            raise ConfigError("spikes must be finite, non-negative counts")

    @property
    def n_in(self) -> int:
        return self.spikes.shape[2] - self.n_heldout

    def subset(self, n_train: int) -> SpikeData:
        """The first ``n_train`` training trials (nested training-set sizes); test set kept."""
        if n_train <= 0 or n_train >= len(self.spikes):
            return self
        cut = {name: getattr(self, name) for name in ARRAYS}
        for name, arr in cut.items():
            if arr is not None and not name.startswith("test_"):
                cut[name] = arr[:n_train]
        return SpikeData(n_heldout=self.n_heldout, dt=self.dt, meta=self.meta, **cut)

    def save(self, path: str | Path) -> Path:
        import io
        import json

        buf = io.BytesIO()
        arrays = {name: getattr(self, name) for name in ARRAYS if getattr(self, name) is not None}
        np.savez_compressed(buf, **arrays, n_heldout=np.array(self.n_heldout),
                            dt=np.array(self.dt), meta=np.array(json.dumps(self.meta)))
        atomic_write_bytes(Path(path), buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SpikeData:
        import json

        path = Path(path)
        if not path.exists():
            raise ConfigError(f"spikes file {path} does not exist; make one with `saelab lfads "
                              "synth` or `saelab lfads nwb`")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "spikes" not in npz:
                    raise ConfigError(f"{path} holds no 'spikes' array ([trials, time, neurons])")
                arrays = {name: npz[name].astype(np.float32) for name in ARRAYS if name in npz}
                n_heldout = int(npz["n_heldout"]) if "n_heldout" in npz else 0
                dt = float(npz["dt"]) if "dt" in npz else 0.01
                meta = json.loads(str(npz["meta"])) if "meta" in npz else {}
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read spikes file {path}: {err}") from err
        return cls(n_heldout=n_heldout, dt=dt, meta=meta, **arrays)


def _lorenz(n_trials: int, n_bins: int, gen: np.random.Generator) -> np.ndarray:
    """[trials, bins, 3] z-scored Lorenz states (σ=10, ρ=28, β=8/3), one random point of the
    attractor per trial as its start, 0.015 time units per bin (RK4, 5 sub-steps)."""
    def deriv(s: np.ndarray) -> np.ndarray:
        x, y, z = s[..., 0], s[..., 1], s[..., 2]
        return np.stack([10.0 * (y - x), x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z], -1)

    def rk4(s: np.ndarray, h: float | np.ndarray) -> np.ndarray:
        k1 = deriv(s)
        k2 = deriv(s + h / 2 * k1)
        k3 = deriv(s + h / 2 * k2)
        k4 = deriv(s + h * k3)
        return s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    h, sub = 0.015 / 5, 5
    state = gen.normal(size=(n_trials, 3)) * 5 + np.array([0.0, 0.0, 25.0])
    for _ in range(int(gen.integers(1500, 2500))):  # onto the attractor, at random phases
        state = rk4(state, h * gen.uniform(0.5, 1.5, size=(n_trials, 1)))
    out = np.empty((n_trials, n_bins, 3))
    for t in range(n_bins):
        out[:, t] = state
        for _ in range(sub):
            state = rk4(state, h)
    return (out - out.mean((0, 1))) / out.std((0, 1))


def _chaotic_rnn(n_trials: int, n_bins: int, gen: np.random.Generator, n_units: int = 50,
                 gamma: float = 1.5, tau: float = 0.025, dt: float = 0.01) -> np.ndarray:
    """[trials, bins, n_units] tanh states of τ ẋ = −x + γ J tanh(x), J ~ N(0, 1/n) (chaotic for
    γ > 1), random initial state per trial, Euler with 4 sub-steps per bin."""
    weights = gen.normal(size=(n_units, n_units)) / np.sqrt(n_units)
    x = gen.normal(size=(n_trials, n_units))
    h = dt / 4
    out = np.empty((n_trials, n_bins, n_units))
    for t in range(n_bins):
        out[:, t] = np.tanh(x)
        for _ in range(4):
            x = x + h / tau * (-x + gamma * np.tanh(x) @ weights.T)
    return out


def synthetic(cfg: SyntheticConfig) -> SpikeData:
    """Generate ``n_trials`` training and ``n_test`` test trials with ground-truth rates,
    latents and a 2-D behaviour-like variable (a fixed random linear read-out of the latents,
    like hand velocity)."""
    cfg.validate()
    gen = np.random.default_rng(cfg.seed)
    total = cfg.n_trials + cfg.n_test
    if cfg.system == "lorenz":
        latents = _lorenz(total, cfg.n_bins, gen)
    else:
        latents = _chaotic_rnn(total, cfg.n_bins, gen, dt=cfg.dt)
    channels = cfg.n_neurons + cfg.n_heldout
    readout = gen.normal(size=(latents.shape[2], channels))
    readout /= np.linalg.norm(readout, axis=0, keepdims=True)  # each neuron's log-rate has unit gain
    log_rates = np.log(cfg.base_rate * cfg.dt) + latents @ readout
    rates = np.exp(log_rates)
    spikes = gen.poisson(rates).astype(np.float32)
    behavior = latents @ gen.normal(size=(latents.shape[2], 2)) / np.sqrt(latents.shape[2])
    n = cfg.n_trials

    def f32(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32)

    return SpikeData(
        spikes=spikes[:n], n_heldout=cfg.n_heldout, dt=cfg.dt, rates=f32(rates[:n]),
        latents=f32(latents[:n]), behavior=f32(behavior[:n]), test_spikes=spikes[n:],
        test_rates=f32(rates[n:]), test_latents=f32(latents[n:]), test_behavior=f32(behavior[n:]),
        meta={"source": "synthetic", "system": cfg.system, "seed": cfg.seed,
              "base_rate": cfg.base_rate})
