"""The trainer's typed options."""

from __future__ import annotations

from dataclasses import dataclass

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
    dist_timeout_s: float = option(600.0, "under torchrun: fail (resumably) when a rank has been silent this long")
    checkpoint_every: int = option(1000, "write a resumable checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    log_every: int = option(50, "log metrics every N steps")
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
        if self.lr <= 0:
            raise ConfigError("lr must be positive")

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
