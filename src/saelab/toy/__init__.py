"""Ground-truth toy data: sparse sums of known feature directions (see docs/toy.md)."""

from saelab.toy.generator import (
    CORRELATION_KINDS,
    FIRING_SCHEDULES,
    ToyConfig,
    ToyModel,
    batch_seed,
    correlation_matrix,
    firing_probabilities,
    validate_correlation_matrix,
    zipf_probabilities,
)
from saelab.toy.source import ToySource

__all__ = [
    "CORRELATION_KINDS",
    "FIRING_SCHEDULES",
    "ToyConfig",
    "ToyModel",
    "ToySource",
    "batch_seed",
    "correlation_matrix",
    "firing_probabilities",
    "validate_correlation_matrix",
    "zipf_probabilities",
]
