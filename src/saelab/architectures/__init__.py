"""SAE architectures: one file each, registered by name (see ``saelab.registry``)."""

from saelab.architectures import (  # noqa: F401  (registers every architecture)
    alignsae,
    batchtopk,
    crosscoder,
    gated,
    jumprelu,
    matryoshka,
    ordered,
    panneal,
    relu,
    topk,
    transcoder,
)
from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext

__all__ = ["SAE", "LossOutput", "SAEConfig", "StepContext"]
