"""The trainer's typed options."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

from saelab.config import ConfigError, option


@dataclass
class TrainConfig:
    total_tokens: int = option(10_000_000, "activation rows to train on")
    batch_size: int = option(4096, "rows per optimiser step")
    lr: float = option(3e-4, "Adam learning rate (an SAE's own `lr` overrides it)")
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(1e-8, "Adam epsilon")
    lr_warmup_steps: int = option(100, "linear learning-rate warm-up from 0")
    lr_decay_start: float = option(0.8, "fraction of training after which lr decays linearly to 0 (1 = never)")
    sparsity_warmup_steps: int = option(0, "linear warm-up of the sparsity coefficient from 0")
    dead_after_tokens: int = option(1_000_000, "a latent that has not fired for this many rows is dead")
    normalize_inputs: bool = option(True, "scale inputs so E‖x‖² = d_in during training (folded into the saved weights)")
    init_samples: int = option(16384, "rows used for the geometric-median b_dec and the input scale")
    geometric_median_init: bool = option(True, "initialise b_dec to the geometric median of the data")
    grad_clip: float = option(0.0, "clip each SAE's gradient norm to this (0 = off)")
    seed: int = option(0, "seed for initialisation and data order")
    device: str = option("cpu", "where to train: cpu, cuda, cuda:N or mps (under torchrun, cuda = each rank's own GPU)")
    autocast: Literal["off", "bf16"] = option(
        "off", "bf16: run the matrix products in bfloat16 (weights, gradients, Adam state and "
        "the loss reductions stay float32); pays on GPUs and CPUs with native bf16")
    shard_latents: bool = option(False, "under torchrun: split each TopK SAE's latents over the "
                                 "ranks (each reads the whole batch) instead of the batch; for "
                                 "SAEs too wide for one device")
    dist_timeout_s: float = option(600.0, "under torchrun: fail (resumably) when a rank has been silent this long")
    checkpoint_every: int = option(1000, "write a resumable checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    log_every: int = option(50, "log metrics every N steps")
    log_proxies: bool = option(True, "log the correct-L0 proxies c_dec and s_n^dec (n = half the "
                               "latents) with the metrics (costs one latents² · d product per log)")
    progress: bool = option(True, "print a progress line (tokens/s, ETA) to stderr")
    measure_peak: bool = option(True, "measure this machine's matmul FLOP/s at start and log the share of it reached")
    tensorboard: bool = option(False, "also log to TensorBoard under <out>/tensorboard")
    wandb_project: str = option("", "also log to this Weights & Biases project")

    def validate(self) -> None:
        if self.batch_size <= 0 or self.total_tokens < self.batch_size:
            raise ConfigError(
                f"need batch_size > 0 and total_tokens >= batch_size, got batch_size="
                f"{self.batch_size}, total_tokens={self.total_tokens}"
            )
        if not 0 <= self.lr_decay_start <= 1:
            raise ConfigError("lr_decay_start is a fraction in [0, 1]")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        positive = {"log_every": self.log_every, "init_samples": self.init_samples,
                    "dead_after_tokens": self.dead_after_tokens}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        non_negative: dict[str, float] = {"checkpoint_every": self.checkpoint_every,
                        "keep_checkpoints": self.keep_checkpoints,
                        "lr_warmup_steps": self.lr_warmup_steps,
                        "sparsity_warmup_steps": self.sparsity_warmup_steps,
                        "grad_clip": self.grad_clip}
        for name, amount in non_negative.items():
            if amount < 0:
                raise ConfigError(f"{name} must be >= 0, got {amount}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            raise ConfigError("need 0 <= adam_beta1, adam_beta2 < 1 and adam_eps > 0")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def lr_scale(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``: warm-up, plateau, linear decay."""
        scale = 1.0
        if self.lr_warmup_steps > 0:
            scale = min(scale, (step + 1) / self.lr_warmup_steps)
        decay_from = int(self.lr_decay_start * self.total_steps)
        if self.lr_decay_start < 1 and step >= decay_from:
            remaining = max(1, self.total_steps - decay_from)
            scale = min(scale, max(0.0, (self.total_steps - step) / remaining))
        return scale

    def sparsity_scale(self, step: int) -> float:
        if self.sparsity_warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / self.sparsity_warmup_steps)


#: more passes over the data than this draw a warning (the SAE may memorise rows)
MANY_EPOCHS = 10


def schedule_warnings(cfg: TrainConfig, n_rows: int | None) -> list[str]:
    """Plain-language warnings about a schedule that defeats itself (empty if none)."""
    out = []
    steps = cfg.total_steps
    if n_rows:
        epochs = cfg.total_tokens / n_rows
        if epochs > MANY_EPOCHS:
            out.append(f"the run reads its {n_rows:,} rows {epochs:.0f} times over; SAEs trained "
                       "on many repeats of the same rows can memorise them: use more data or "
                       "fewer total_tokens")
    if cfg.lr_warmup_steps > steps:
        out.append(f"lr_warmup_steps={cfg.lr_warmup_steps} is longer than the run ({steps} steps): "
                   "the learning rate never reaches its set value")
    if cfg.sparsity_warmup_steps > steps:
        out.append(f"sparsity_warmup_steps={cfg.sparsity_warmup_steps} is longer than the run "
                   f"({steps} steps): the sparsity penalty never reaches full strength")
    if cfg.dead_after_tokens > cfg.total_tokens:
        out.append(f"dead_after_tokens={cfg.dead_after_tokens:,} exceeds the run's "
                   f"{cfg.total_tokens:,} tokens: no latent can count as dead, so the logged "
                   "dead share always reads 0 and AuxK never runs; lower dead_after_tokens")
    return out


def warn_about_schedule(cfg: TrainConfig, n_rows: int | None) -> None:
    for message in schedule_warnings(cfg, n_rows):
        warnings.warn(message, stacklevel=3)
