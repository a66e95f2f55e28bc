"""saelab: sparse autoencoders on neural-network activations."""

# `saelab.architectures` is the subpackage (one module per architecture), so that
# `import saelab.architectures.jumprelu` works; the registry listing is `list_architectures()`.
import saelab.architectures as architectures
from saelab.architectures.base import SAE, LossOutput, SAEConfig, StepContext
from saelab.io import load, save

# saelab.interop registers the SAELens / dictionary_learning readers that `saelab.load` tries.
import saelab.interop  # noqa: F401  isort: skip
from saelab.registry import architectures as list_architectures
from saelab.registry import build, config_from_dict, get_architecture, register

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
    "list_architectures",
    "load",
    "register",
    "save",
]
