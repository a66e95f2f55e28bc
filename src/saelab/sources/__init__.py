"""Model inputs beyond text: images for vision towers, protein sequences for protein LMs.

Each source turns files into :class:`InputBatch` objects (the model's keyword inputs, an id per
position and which positions count); :func:`build_input_cache` runs any model over them and
writes the same shuffled, checksummed activation cache as ``saelab cache`` does for text, so
training and evaluation are unchanged. :mod:`saelab.sources.tiny` builds tiny local ViT, CLIP
vision and ESM models (random weights, no download) for tests and demos.
"""

from saelab.sources.base import InputBatch, build_input_cache, input_forward
from saelab.sources.images import (
    ImageConfig,
    image_batches,
    list_images,
    load_vision_model,
    sequence_length,
)
from saelab.sources.protein import ProteinConfig, protein_batches, read_fasta

__all__ = ["ImageConfig", "InputBatch", "ProteinConfig", "build_input_cache", "image_batches",
           "input_forward", "list_images", "load_vision_model", "protein_batches", "read_fasta", "sequence_length"]
