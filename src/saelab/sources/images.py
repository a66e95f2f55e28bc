"""Images as model input: a folder of image files through a vision tower (ViT, CLIP, ...).

Rows are the tokens of the hooked layer: the CLS token, the patch tokens, or both. The cache
stores, for every position, the image's number in the sorted file listing, so a cached row
traces back to its image (sequence) and token (position).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from saelab.config import ConfigError, option
from saelab.data.base import DataError
from saelab.models.hf import ModelLoadError, _transformers
from saelab.sources.base import InputBatch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageConfig:
    tokens: Literal["all", "cls", "patch"] = option(
        "patch", "which tokens become rows: the CLS token, the patch tokens, or all")
    prefix_tokens: int = option(1, "leading non-patch tokens (1 = CLS; more for register tokens)")
    batch_images: int = option(16, "images per forward pass")
    max_images: int = option(0, "use at most this many images (0 = all)")

    def validate(self) -> None:
        if self.batch_images < 1 or self.max_images < 0 or self.prefix_tokens < 0:
            raise ConfigError("need batch_images >= 1, max_images >= 0 and prefix_tokens >= 0")
        if self.tokens == "cls" and self.prefix_tokens < 1:
            raise ConfigError("tokens='cls' needs prefix_tokens >= 1 (the CLS token comes first)")


def list_images(folder: str | Path, limit: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), at most ``limit`` (0 = all)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths[:limit] if limit else paths


def load_vision_model(name_or_path: str | Path, device: str = "cpu") -> tuple[nn.Module, Any]:
    """A vision tower and its image processor from a hub id or a local folder, in eval mode.

    A full CLIP/SigLIP model is reduced to its ``vision_model``; hook paths are then relative
    to that tower (e.g. ``encoder.layers.3``).
    """
    tf = _transformers()
    name = str(name_or_path)
    try:
        model = tf.AutoModel.from_pretrained(name)
        processor = tf.AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load vision model {name!r}: {err}. A folder needs "
                             "config.json, weights and preprocessor_config.json") from err
    if hasattr(model, "vision_model") and not hasattr(model, "embeddings"):
        model = model.vision_model
    return model.eval().to(device), processor


def _open_rgb(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image ({err}); remove it from the folder") from err


def sequence_length(model: nn.Module, processor: Any, device: str = "cpu") -> int:
    """Tokens per image at the model's layers (one forward pass of a blank image)."""
    from PIL import Image

    pixels = processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels.to(device))
    hidden = getattr(out, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor):
        raise ModelLoadError(f"{type(model).__name__} does not return last_hidden_state; "
                             "give a vision transformer")
    return int(hidden.shape[1])


def position_keep(cfg: ImageConfig, seq_len: int) -> torch.Tensor:
    """Bool (seq_len): the token positions that become rows."""
    keep = torch.zeros(seq_len, dtype=torch.bool)
    if cfg.tokens in ("cls", "all"):
        keep[0] = True
    if cfg.tokens in ("patch", "all"):
        keep[cfg.prefix_tokens:] = True
    if cfg.tokens == "all":
        keep[:cfg.prefix_tokens] = True
    return keep


def image_batches(paths: list[Path], processor: Any, cfg: ImageConfig, seq_len: int,
                  device: str = "cpu") -> Iterator[InputBatch]:
    """Batches of ``pixel_values`` with the image number at every position."""
    cfg.validate()
    keep_S = position_keep(cfg, seq_len)
    for start in range(0, len(paths), cfg.batch_images):
        chunk = paths[start:start + cfg.batch_images]
        pixels = processor(images=[_open_rgb(p) for p in chunk], return_tensors="pt")
        ids = torch.arange(start, start + len(chunk), dtype=torch.int64)[:, None]
        yield InputBatch({"pixel_values": pixels["pixel_values"].to(device)},
                         ids.expand(len(chunk), seq_len).contiguous(),
                         keep_S.expand(len(chunk), seq_len).contiguous())
