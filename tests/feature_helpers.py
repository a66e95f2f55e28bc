"""A tiny real pipeline for the feature-store and explorer tests: a tiny GPT-2 whose corpus
holds markup (so tokens carry injection attempts), an activation cache, a TopK SAE, a store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from saelab.architectures.base import SAE
from saelab.cache import CacheConfig, build_cache
from saelab.features import CacheRows, FeatureBuildConfig, ModelSpec, build_store, load_model
from saelab.io import save
from saelab.models.hf import load_hf_model
from saelab.models.tiny import build_tiny_gpt2
from saelab.registry import build, config_from_dict
from saelab.text.packing import TextConfig
from saelab.text.readers import corpus_path

INJECTION = "<script>alert(1)</script>"
ATTRIBUTE_INJECTION = "\"'><img/src=x/onerror=alert(2)>"
HOOK = "transformer.h.1"


@dataclass
class TinySetup:
    root: Path
    model: Path
    cache: Path
    sae_dir: Path
    sae: SAE
    store_dir: Path


def tiny_sae(seed: int = 0, d_sae: int = 64, k: int = 4) -> SAE:
    sae = build(config_from_dict({"architecture": "topk", "k": k, "d_in": 32,
                                  "d_sae": d_sae}).resolved())
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae


def injection_corpus(path: Path) -> Path:
    docs = corpus_path().read_text().split("\n\n")[:300]
    for i in range(0, len(docs), 6):  # markup in ordinary sentences, often enough to be sampled
        docs[i] = f"{docs[i]} The page said {INJECTION} and then {ATTRIBUTE_INJECTION} again."
    path.write_text("\n\n".join(docs))
    return path


def make_setup(root: Path, cfg: FeatureBuildConfig | None = None) -> TinySetup:
    text = injection_corpus(root / "corpus.txt")
    model = build_tiny_gpt2(root / "model", corpus=text, split_punctuation=False)
    loaded = load_hf_model(model)
    cache = root / "cache"
    build_cache(loaded.model, loaded.tokenizer, [text], [HOOK], cache,
                CacheConfig(max_tokens=6000, batch_contexts=8),
                TextConfig(context_size=48), model_name=str(model), log=lambda _m: None)
    sae = tiny_sae()
    sae_dir = save(sae, root / "sae")
    stream = CacheRows(cache, batch_rows=1024)
    spec = ModelSpec.of_cache(cache)
    build_store(sae, stream, sae_dir / "features", cfg or FeatureBuildConfig(),
                spec=spec, tokens=stream.tokens, loaded=load_model(spec), sae_path=str(sae_dir),
                source=str(cache), progress=False)
    return TinySetup(root, model, cache, sae_dir, sae, sae_dir / "features")
