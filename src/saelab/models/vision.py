"""Hugging Face vision models: image embeddings and hooked activations, for the
monosemanticity score on images.

``load_vision_model`` takes a hub id or a local folder (with ``config.json``, weights and a
``preprocessor_config.json``), like :func:`saelab.models.load_hf_model` for text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saelab.models.hf import ModelLoadError, _transformers


@dataclass
class VisionModel:
    model: nn.Module
    processor: Any
    name: str


def load_vision_model(name_or_path: str | Path, local_files_only: bool | None = None
                      ) -> VisionModel:
    """A vision backbone (``AutoModel``) and its image processor, in eval mode."""
    tf = _transformers()
    name = str(name_or_path)
    if (Path(name).exists() or name.startswith((".", "/", "~"))) and not Path(name).is_dir():
        raise ModelLoadError(f"vision model folder {name} does not exist")
    kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        model = tf.AutoModel.from_pretrained(name, **kwargs)
        processor = tf.AutoImageProcessor.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load vision model {name!r}: {err}. A folder needs "
                             "config.json, weights and preprocessor_config.json") from err
    return VisionModel(model.eval(), processor, name)


def _pixels(vm: VisionModel, images: list[Any]) -> Tensor:
    return vm.processor(images=images, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def image_embeddings(vm: VisionModel, images: list[Any], batch_size: int = 32) -> Tensor:
    """``(N, E)`` unit-norm embedding per image: the model's ``image_embeds`` or
    ``pooler_output`` when it has one, else the first (CLS) token of the last hidden state."""
    out = []
    for start in range(0, len(images), batch_size):
        output = vm.model(pixel_values=_pixels(vm, images[start:start + batch_size]))
        emb = getattr(output, "image_embeds", None)
        if emb is None:
            emb = getattr(output, "pooler_output", None)
        if emb is None:
            emb = output.last_hidden_state[:, 0]
        out.append(torch.nn.functional.normalize(emb.float(), dim=1))
    return torch.cat(out)


@torch.no_grad()
def image_activations(vm: VisionModel, hook: str, images: list[Any], token: int = 0,
                      batch_size: int = 32) -> Tensor:
    """``(N, D)`` activations at ``hook`` (a module path such as ``encoder.layer.1``, or
    ``layers.1`` in recent transformers versions) on token
    ``token`` of every image (0 = CLS, as in Pach et al.)."""
    from saelab.models.hooks import capture

    out = []
    for start in range(0, len(images), batch_size):
        pixels = _pixels(vm, images[start:start + batch_size])
        captured = capture(vm.model, [hook], partial(vm.model, pixel_values=pixels))
        acts = next(iter(captured.values()))
        out.append(acts[:, token].float() if acts.ndim == 3 else acts.float())
    return torch.cat(out)


def build_tiny_vit(folder: str | Path, *, image_size: int = 32, patch_size: int = 8,
                   hidden_size: int = 32, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny random-weight ViT with its image processor, saved like a hub model (for tests and
    docs: exercises the real loading path without a download)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                       num_hidden_layers=n_layers, num_attention_heads=2,
                       intermediate_size=2 * hidden_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ViTModel(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
