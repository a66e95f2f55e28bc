"""Typed options of an LFADS model, its training and its synthetic data (one config tree for
files, the CLI and checkpoints, as for SAEs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from saelab.config import ConfigError, option


@dataclass
class LFADSModelConfig:
    n_neurons: int = option(0, "observed neurons (input and output channels; 0 = from the data)")
    n_heldout: int = option(0, "extra neurons only predicted, never input (co-bps; 0 = none)")
    ic_enc_dim: int = option(64, "hidden units per direction of the initial-condition encoder")
    ci_enc_dim: int = option(32, "hidden units per direction of the controller-input encoder")
    con_dim: int = option(32, "controller GRU units")
    co_dim: int = option(2, "inferred inputs per time step (0 = no controller)")
    gen_dim: int = option(64, "generator GRU units (= dimension of g0)")
    fac_dim: int = option(8, "latent factors")
    ic_prior_var: float = option(0.1, "variance of the g0 prior N(mu, var) (mu is learned)")
    co_prior_tau: float = option(10.0, "initial time constant (bins) of the AR(1) input prior")
    co_prior_var: float = option(0.1, "initial stationary variance of the AR(1) input prior")
    cell_clip: float = option(5.0, "clip generator/controller hidden states to +-this (0 = off)")

    def validate(self) -> None:
        sizes = {"n_neurons": self.n_neurons, "ic_enc_dim": self.ic_enc_dim,
                 "gen_dim": self.gen_dim, "fac_dim": self.fac_dim}
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {value}")
        if self.co_dim < 0 or self.n_heldout < 0:
            raise ConfigError("model.co_dim and model.n_heldout must be >= 0")
        if self.co_dim > 0 and (self.ci_enc_dim < 1 or self.con_dim < 1):
            raise ConfigError("a controller (co_dim > 0) needs ci_enc_dim >= 1 and con_dim >= 1")
        if self.ic_prior_var <= 0 or self.co_prior_tau <= 0 or self.co_prior_var <= 0:
            raise ConfigError("model.ic_prior_var, co_prior_tau and co_prior_var must be > 0")

    @property
    def has_controller(self) -> bool:
        return self.co_dim > 0


@dataclass
class LFADSTrainConfig:
    """Optimisation and regularisation. The PBT-searched options are ``lr``, ``dropout``,
    ``cd_rate``, ``kl_weight`` and ``l2_weight``."""

    steps: int = option(2000, "optimiser steps")
    batch_size: int = option(64, "trials per step")
    lr: float = option(3e-3, "Adam learning rate")
    dropout: float = option(0.1, "dropout on the inputs, g0 and the generator state")
    cd_rate: float = option(0.3, "coordinated dropout: share of input entries dropped and scored "
                            "(0 = off)")
    sv_rate: float = option(0.1, "sample validation: share of entries held out of every trial's "
                            "input and training loss, scored as the validation metric (0 = off)")
    kl_weight: float = option(1.0, "weight of the KL terms (g0 and inferred inputs)")
    l2_weight: float = option(1.0, "weight of the L2 penalty on recurrent weights")
    kl_ramp_steps: int = option(500, "linear ramp of the KL weight from 0 over this many steps")
    l2_ramp_steps: int = option(500, "linear ramp of the L2 weight from 0 over this many steps")
    grad_clip: float = option(200.0, "clip the gradient norm to this (0 = off)")
    valid_share: float = option(0.2, "share of the training trials held out for validation")
    seed: int = option(0, "seed of initialisation, splits, masks and batches")
    eval_every: int = option(100, "steps between validation passes (logged to metrics.jsonl)")
    checkpoint_every: int = option(500, "steps between resumable checkpoints (0 = end only)")
    keep_checkpoints: int = option(2, "recent checkpoints kept")
    threads: int = option(0, "torch CPU threads (0 = torch's default)")
    progress: bool = option(True, "print a progress line (trials/s, ETA) to stderr")

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ConfigError("train.steps, train.batch_size and train.eval_every must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        for name in ("dropout", "cd_rate", "sv_rate"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"train.{name} is a share in [0, 1), got {value}")
        if self.cd_rate + self.sv_rate >= 0.95:
            raise ConfigError("train.cd_rate + train.sv_rate leave almost no input; lower them")
        if not 0 < self.valid_share < 1:
            raise ConfigError(f"train.valid_share is a share in (0, 1), got {self.valid_share}")
        for name in ("kl_weight", "l2_weight", "kl_ramp_steps", "l2_ramp_steps", "grad_clip",
                     "checkpoint_every", "keep_checkpoints", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0")

    def kl_scale(self, step: int) -> float:
        return self.kl_weight * _ramp(step, self.kl_ramp_steps)

    def l2_scale(self, step: int) -> float:
        return self.l2_weight * _ramp(step, self.l2_ramp_steps)


def _ramp(step: int, length: int) -> float:
    return 1.0 if length <= 0 else min(1.0, (step + 1) / length)


@dataclass
class SyntheticConfig:
    """Spiking data with known rates, as in the LFADS papers."""

    system: Literal["lorenz", "chaotic_rnn"] = option("lorenz", "latent dynamical system")
    n_trials: int = option(1000, "training trials (sizes below this are nested subsets)")
    n_test: int = option(200, "held-out test trials (never trained on)")
    n_neurons: int = option(30, "observed neurons")
    n_heldout: int = option(10, "held-out neurons (scored by co-bps, never input)")
    n_bins: int = option(50, "time bins per trial")
    dt: float = option(0.01, "bin width in seconds")
    base_rate: float = option(10.0, "median firing rate in spikes/s")
    seed: int = option(0, "seed of the system, readout and spikes")

    def validate(self) -> None:
        if min(self.n_trials, self.n_test, self.n_neurons, self.n_bins) < 1:
            raise ConfigError("n_trials, n_test, n_neurons and n_bins must be >= 1")
        if self.n_heldout < 0 or self.dt <= 0 or self.base_rate <= 0:
            raise ConfigError("n_heldout must be >= 0 and dt, base_rate > 0")


@dataclass
class LFADSRunConfig:
    """A run file: ``data`` (a .npz spikes file), ``[model]`` and ``[train]``."""

    data: str = option("", "spikes file (.npz from `saelab lfads synth` or the NWB loader)")
    out: str = option("runs/lfads", "output folder")
    n_train: int = option(0, "use only the first N training trials (0 = all)")
    model: LFADSModelConfig = field(default_factory=LFADSModelConfig)
    train: LFADSTrainConfig = field(default_factory=LFADSTrainConfig)
