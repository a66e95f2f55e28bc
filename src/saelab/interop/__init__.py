"""Interoperability: SAELens and dictionary_learning folders, both ways, and a hub layout.

``saelab.load`` opens either format directly (:func:`detect_format` decides); ``saelab export``
(:func:`export`) writes a saelab SAE in either format inside a Hugging Face Hub-style folder
with a model card. Which architectures map to which, and why some do not: ``docs/interop.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.architectures.base import SAE
from saelab.interop.common import InteropError, detect_format, read_foreign
from saelab.interop.hub import ExportResult, export
from saelab.io import register_foreign_reader


def load_foreign(path: Path, device: str | torch.device = "cpu") -> SAE | None:
    """The SAE in a SAELens or dictionary_learning folder; None for any other folder."""
    fmt = detect_format(path)
    return None if fmt is None else read_foreign(path, fmt, device)


register_foreign_reader(load_foreign)

__all__ = ["ExportResult", "InteropError", "detect_format", "export", "load_foreign",
           "read_foreign"]
