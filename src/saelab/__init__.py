"""saelab: sparse autoencoders on neural-network activations."""

from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext
from saelab.io import load, save
from saelab.registry import architectures, build, config_from_dict, get_architecture, register

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "LossOutput",
    "SAEConfig",
    "StepContext",
    "architectures",
    "build",
    "config_from_dict",
    "get_architecture",
    "load",
    "register",
    "save",
]
