"""Interoperability: SAELens and dictionary_learning folders, both ways, and a hub layout.

``saelab.load`` opens either format directly (:func:`detect_format` decides); ``saelab export``
(:func:`export`) writes a saelab SAE in either format inside a Hugging Face Hub-style folder
with a model card. Which architectures map to which, and why some do not: ``docs/interop.md``.
"""

from saelab.interop.common import InteropError, detect_format, read_foreign
from saelab.interop.hub import ExportResult, export

__all__ = ["ExportResult", "InteropError", "detect_format", "export", "read_foreign"]
