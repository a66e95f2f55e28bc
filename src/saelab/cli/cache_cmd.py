"""``saelab cache``: run a model over text and cache its activations (shuffled, resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from saelab.cache import CacheConfig, build_cache, read_manifest, verify_checksums
from saelab.config import add_arguments, args_to_dict, from_dict
from saelab.text.packing import TextConfig

EPILOG = """examples:
  saelab cache --model gpt2 --hook transformer.h.5 --text corpus.txt --max-tokens 2000000 --out caches/h5
  saelab cache --model ./my_model --hook model.layers.3 --hook model.layers.3.mlp:input --text data.jsonl --out caches/l3
  saelab cache --verify caches/h5           (check every shard's sha256)
Several hooks share one forward pass and go to OUT/<hook>/. Rerunning the same command after a
crash resumes from the last completed context batch. Then: saelab train --data caches/h5 ..."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="cache model activations over text to disk",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Hugging Face hub id or local model folder")
    p.add_argument("--hook", action="append", default=[],
                   help="module path to read, e.g. transformer.h.5 (append :input for the "
                   "module's input, :output:N for tuple element N); repeatable")
    p.add_argument("--text", nargs="+", action="extend", default=[],
                   help="text sources: .txt, .jsonl, .parquet or a saved datasets folder")
    p.add_argument("--out", help="cache folder (created; must be new, empty, or this cache)")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype to run the model in")
    p.add_argument("--verify", metavar="CACHE", help="only check the sha256 of every file of CACHE")
    add_arguments(p.add_argument_group("cache options"), CacheConfig)
    add_arguments(p.add_argument_group("text options"), TextConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verify:
        manifest = read_manifest(args.verify)
        verify_checksums(args.verify, manifest)
        print(f"{args.verify}: {len(manifest.shards)} shard(s), {manifest.n_rows:,} rows: all "
              "checksums match")
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--hook", args.hook),
                                        ("--text", args.text), ("--out", args.out)) if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; see saelab cache --help")
    cfg = from_dict(CacheConfig, args_to_dict(args, CacheConfig))
    text = from_dict(TextConfig, args_to_dict(args, TextConfig))
    from saelab.models.hf import load_hf_model  # imports transformers: only when needed

    loaded = load_hf_model(args.model, dtype=args.model_dtype, device=cfg.device)
    print(f"caching {args.hook} of {args.model} over {args.text} -> {args.out}", file=sys.stderr)
    result = build_cache(loaded.model, loaded.tokenizer, args.text, args.hook, args.out, cfg,
                         text, model_name=args.model)
    summary = {hook: {"folder": str(result.folders[hook]), "rows": m.n_rows,
                      "contexts": m.n_contexts, "width": m.width, "shards": len(m.shards)}
               for hook, m in result.manifests.items()}
    print(json.dumps({"caches": summary, "seconds": round(result.seconds, 2)}, indent=2))
    return 0
