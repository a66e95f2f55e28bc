"""Vision towers over image folders and protein LMs over FASTA, on tiny models built locally
from Hugging Face configs: cache → train → eval through the CLI, and the cached rows are the
model's real activations at the recorded (sequence, position)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saelab
from saelab.cache import CacheSource
from saelab.cli import main
from saelab.data.base import DataError
from saelab.sources import read_fasta
from saelab.sources.tiny import build_tiny_esm, build_tiny_vit, write_toy_fasta, write_toy_images

TRAIN = ["--total-tokens", "2048", "--batch-size", "256", "--no-progress", "--no-measure-peak",
         "--init-samples", "512", "--lr-warmup-steps", "2"]


def last_json(text: str) -> dict:
    return json.loads(text[text.rindex("\n{") + 1:] if "\n{" in text else text)


def test_read_fasta(tmp_path):
    path = tmp_path / "a.fasta"
    path.write_text(">p1 first\nmkv\nLLA\n\n>p2\nGG\n>empty\n")
    assert read_fasta(path) == [("p1 first", "MKVLLA"), ("p2", "GG")]
    (tmp_path / "bad.fasta").write_text("MKV\n>p\nA\n")
    with pytest.raises(DataError, match="before the first '>'"):
        read_fasta(tmp_path / "bad.fasta")


def test_esm_cache_train_eval_end_to_end(tmp_path, capsys):
    model_dir = build_tiny_esm(tmp_path / "esm")
    fasta = write_toy_fasta(tmp_path / "seqs.fasta", 24)
    cache = tmp_path / "cache"
    assert main(["cache-proteins", "--model", str(model_dir), "--hook", "encoder.layer.1",
                 "--fasta", str(fasta), "--out", str(cache), "--max-length", "64",
                 "--batch-sequences", "8"]) == 0
    source = CacheSource(cache)
    lengths = [min(len(s), 62) for _, s in read_fasta(fasta)]
    assert source.n_rows == sum(lengths)  # every residue, no CLS/EOS/padding
    # cached rows are the model's hidden states at their recorded (sequence, position)
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    seqs = [s for _, s in read_fasta(fasta)]
    enc = tok(seqs[:8], padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    seen = []
    handle = model.encoder.layer[1].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(**enc)
    handle.remove()
    hidden = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    pos = source.positions(np.arange(source.n_rows))
    first = np.flatnonzero(pos[:, 0] < 8)[:40]
    expected = hidden[pos[first, 0], pos[first, 1]].numpy()
    np.testing.assert_allclose(source.take(first), expected, atol=1e-5)
    capsys.readouterr()
    assert main(["train", "--data", str(cache), "--arch", "topk", "--k", "4", "--expansion", "4",
                 "--out", str(tmp_path / "run"), *TRAIN]) == 0
    sae_dir = tmp_path / "run" / "final" / "topk"
    sae = saelab.load(sae_dir)
    assert sae.cfg.model_name == str(model_dir) and sae.cfg.hook_name == "encoder.layer.1"
    capsys.readouterr()
    assert main(["eval", str(sae_dir), "--data", str(cache), "--no-plot"]) == 0
    headline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert headline["l0"] == pytest.approx(4.0)
    assert 0.2 < headline["explained_variance"] <= 1.0


@pytest.mark.parametrize("kind,hook", [("vit", "layers.1"), ("clip", "encoder.layers.1")])
def test_vision_cache_train_eval_end_to_end(tmp_path, capsys, kind, hook):
    model_dir = build_tiny_vit(tmp_path / kind, kind=kind)
    images = write_toy_images(tmp_path / "images", 12)
    cls_cache, patch_cache = tmp_path / "cls", tmp_path / "patch"
    for tokens, out in (("cls", cls_cache), ("patch", patch_cache)):
        assert main(["cache-images", "--model", str(model_dir), "--hook", hook, "--images",
                     str(images), "--tokens", tokens, "--out", str(out),
                     "--batch-images", "5"]) == 0
    assert CacheSource(cls_cache).n_rows == 12
    patches = CacheSource(patch_cache)
    assert patches.n_rows == 12 * 16  # 32×32 images in 8×8 patches, CLS left out
    pos = patches.positions(np.arange(patches.n_rows))
    assert pos[:, 1].min() == 1 and set(np.unique(pos[:, 0])) == set(range(12))
    assert np.all(patches.tokens[pos[:, 0], pos[:, 1]] == pos[:, 0])  # image number per row
    if kind == "vit":
        return  # one full train/eval is enough per test run; the cache checks cover both
    capsys.readouterr()
    assert main(["train", "--data", str(patch_cache), "--arch", "topk", "--k", "4",
                 "--expansion", "4", "--batch-size", "64", "--total-tokens", "1024",
                 "--out", str(tmp_path / "run"), "--no-progress", "--no-measure-peak",
                 "--init-samples", "192", "--lr-warmup-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "final" / "topk"), "--data", str(patch_cache),
                 "--no-plot"]) == 0
    headline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert headline["l0"] == pytest.approx(4.0) and headline["explained_variance"] > 0


def test_image_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    from saelab.sources import list_images

    with pytest.raises(DataError, match="no image files"):
        list_images(tmp_path / "empty")
