"""Tiny vision and protein models built locally from Hugging Face configs (random weights).

They exercise the real loading path (``from_pretrained`` on a folder) with no download; the
activations are real model activations, but the models know nothing. Also toy image folders
and FASTA files to feed them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I",
             "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O",
             ".", "-", "<null_1>", "<mask>"]
AMINO_ACIDS = "LAGVSERTIDPKQNFYMHWC"


def _seeded(seed: int, build):  # type: ignore[no-untyped-def]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def build_tiny_esm(folder: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                   seed: int = 0) -> Path:
    """An ESM-2-style masked protein LM (rotary positions, ESM vocabulary and tokenizer)."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n")
    tokenizer = EsmTokenizer(str(vocab))
    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=2 * hidden,
                       max_position_embeddings=1026, position_embedding_type="rotary",
                       pad_token_id=ESM_VOCAB.index("<pad>"),
                       mask_token_id=ESM_VOCAB.index("<mask>"), emb_layer_norm_before=False,
                       token_dropout=True, architectures=["EsmForMaskedLM"])
    model = _seeded(seed, lambda: EsmForMaskedLM(config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_vit(folder: str | Path, *, kind: str = "vit", image_size: int = 32,
                   patch_size: int = 8, hidden: int = 32, layers: int = 2, heads: int = 2,
                   seed: int = 0) -> Path:
    """A ViT (``kind="vit"``) or CLIP vision tower (``kind="clip"``) with its image processor."""
    import transformers as tf

    folder = Path(folder)
    sizes: dict[str, Any] = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                 num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden)
    processor: Any
    if kind == "vit":
        model = _seeded(seed, lambda: tf.ViTModel(tf.ViTConfig(**sizes)))
        processor = tf.ViTImageProcessor(size={"height": image_size, "width": image_size})
    elif kind == "clip":
        model = _seeded(seed, lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**sizes)))
        processor = tf.CLIPImageProcessor(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"kind must be 'vit' or 'clip', got {kind!r}")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_toy_images(folder: str | Path, n: int, *, size: int = 32, seed: int = 0) -> Path:
    """``n`` PNG images of coloured rectangles and stripes on noise (deterministic)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 60, size=(size, size, 3))
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, size - 4, size=2)
            w, h = rng.integers(4, size // 2, size=2)
            img[y0:y0 + h, x0:x0 + w] = rng.integers(80, 256, size=3)
        if rng.random() < 0.5:
            img[:, :: int(rng.integers(2, 6))] = rng.integers(0, 256, size=3)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img_{i:05d}.png")
    return folder


def write_toy_fasta(path: str | Path, n: int, *, min_len: int = 30, max_len: int = 120,
                    seed: int = 0) -> Path:
    """``n`` random protein sequences with a few repeated motifs, as a FASTA file."""
    rng = np.random.default_rng(seed)
    motifs = ["".join(rng.choice(list(AMINO_ACIDS), size=6)) for _ in range(8)]
    lines = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len))
        seq = "".join(rng.choice(list(AMINO_ACIDS), size=length))
        for _ in range(int(rng.integers(0, 4))):
            at = int(rng.integers(0, max(1, length - 6)))
            seq = seq[:at] + motifs[int(rng.integers(0, len(motifs)))] + seq[at + 6:]
        lines += [f">toy_{i} synthetic", *[seq[j:j + 60] for j in range(0, len(seq), 60)]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
