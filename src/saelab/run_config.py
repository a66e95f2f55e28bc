"""The config tree of a training run: data + trainer options + named SAEs.

A run file (TOML or JSON) looks like::

    out = "runs/example"
    [data]
    path = "acts.npy"
    [train]
    total_tokens = 2_000_000
    [saes.topk32]
    architecture = "topk"
    k = 32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.architectures.base import SAEConfig
from saelab.config import ConfigError, from_dict, option, to_dict
from saelab.data.open import DataConfig
from saelab.registry import config_from_dict
from saelab.training.config import TrainConfig

__all__ = ["DataConfig", "RunConfig", "load_run_config", "run_config_from_file"]


@dataclass
class RunConfig:
    out: str = option("runs/saelab", "output folder (checkpoints, logs, final SAEs)")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    saes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: int = option(1, "train every SAE this many times from different initialisations "
                        "(named NAME_seed0, NAME_seed1, ...) for mean ± 95% intervals")

    def sae_configs(self) -> dict[str, SAEConfig]:
        if not self.saes:
            raise ConfigError("the run has no SAEs: add a [saes.NAME] table or pass --arch")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        configs = {name: config_from_dict(dict(opts), where=f"saes.{name}")
                   for name, opts in self.saes.items()}
        if self.seeds == 1:
            return configs
        # The trainer seeds each SAE's initialisation by its position, so copies differ.
        return {seed_name(name, s): cfg for name, cfg in configs.items() for s in range(self.seeds)}

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def seed_name(name: str, seed: int) -> str:
    """The name of seed `seed` of SAE `name` in a run with several seeds."""
    return f"{name}_seed{seed}"


def load_run_config(data: dict[str, Any]) -> RunConfig:
    cfg = from_dict(RunConfig, data)
    if not cfg.out.strip():
        raise ConfigError("the output folder (out / --out) is empty; give a folder path")
    cfg.sae_configs()  # validate architecture options early
    return cfg


def run_config_from_file(path: str | Path) -> RunConfig:
    from saelab.config import load_file

    return load_run_config(load_file(path))
