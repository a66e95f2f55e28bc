"""Architecture registry: names in configs and checkpoints map to SAE classes.

Adding an architecture = adding one file under ``saelab/architectures/`` that decorates its class
with :func:`register` (and importing it in ``architectures/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from saelab.config import ConfigError, from_dict

if TYPE_CHECKING:
    from saelab.architectures.base import SAE, SAEConfig

_REGISTRY: dict[str, type[SAE]] = {}
S = TypeVar("S", bound="type[SAE]")


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make an SAE class available under ``name``."""

    def wrap(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _ensure_loaded() -> None:
    import saelab.architectures  # noqa: F401  (imports every architecture module)


def architectures() -> dict[str, type[SAE]]:
    """All registered architectures by name."""
    _ensure_loaded()
    return dict(_REGISTRY)


def get_architecture(name: str) -> type[SAE]:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown architecture {name!r}; known architectures: {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name]


def config_from_dict(data: dict[str, Any], where: str = "sae") -> SAEConfig:
    """Parse ``{"architecture": name, ...options}`` into that architecture's config class."""
    if "architecture" not in data:
        raise ConfigError(f"{where}: missing 'architecture'; choose one of {sorted(architectures())}")
    rest = {k: v for k, v in data.items() if k not in ("architecture", "name")}
    cls = get_architecture(str(data["architecture"]))
    return from_dict(cls.config_class, rest, where=where)


def build(cfg: SAEConfig) -> SAE:
    """Instantiate the SAE class whose config class is ``type(cfg)``."""
    for cls in architectures().values():
        if type(cfg) is cls.config_class:
            return cls(cfg)
    raise ConfigError(f"no registered architecture uses config class {type(cfg).__name__}")
