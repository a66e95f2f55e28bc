"""Training: one trainer for every architecture, resumable, many SAEs per batch stream."""

from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer, TrainingError

__all__ = ["TrainConfig", "Trainer", "TrainingError"]
