"""``saelab cache-images`` and ``saelab cache-proteins``: cache a vision tower's or a protein
language model's activations, like ``saelab cache`` does for text. Then train and evaluate on
the cache with ``saelab train --data OUT`` and ``saelab eval SAE --data OUT``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from saelab.cache import CacheConfig
from saelab.config import add_arguments, args_to_dict, from_dict

IMAGES_EPILOG = """examples:
  saelab cache-images --model google/vit-base-patch16-224 --hook layers.6 --images photos/ --out caches/vit6
  saelab cache-images --model ./clip --hook encoder.layers.8 --images photos/ --tokens cls --out caches/clip_cls
For a full CLIP model the vision tower is used and hook paths are relative to it. Several
--hook share one forward pass and go to OUT/<hook>/ with matching rows."""

PROTEINS_EPILOG = """examples:
  saelab cache-proteins --model facebook/esm2_t6_8M_UR50D --hook encoder.layer.3 --fasta seqs.fasta --out caches/esm3
CLS, EOS and padding positions are left out; each sequence is cropped to --max-length tokens."""


def add_parser(sub: Any) -> None:
    for name, helptext, epilog, cfg_cls in (
        ("cache-images", "cache a vision tower's activations over an image folder",
         IMAGES_EPILOG, "images"),
        ("cache-proteins", "cache a protein LM's activations over FASTA sequences",
         PROTEINS_EPILOG, "proteins"),
    ):
        p = sub.add_parser(name, help=helptext, description=__doc__, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--model", required=True, help="Hugging Face hub id or local model folder")
        p.add_argument("--hook", action="append", required=True,
                       help="module path to read (repeatable; :input for a module's input)")
        p.add_argument("--out", required=True, help="cache folder")
        if cfg_cls == "images":
            from saelab.sources import ImageConfig

            p.add_argument("--images", required=True, help="folder of image files (recursive)")
            add_arguments(p.add_argument_group("image options"), ImageConfig)
            p.set_defaults(run=run_images)
        else:
            from saelab.sources import ProteinConfig

            p.add_argument("--fasta", required=True, nargs="+", help="FASTA file(s)")
            add_arguments(p.add_argument_group("protein options"), ProteinConfig)
            p.set_defaults(run=run_proteins)
        add_arguments(p.add_argument_group("cache options"), CacheConfig,
                      skip=("batch_contexts", "max_tokens"))


def _report(result: Any) -> None:
    summary = {hook: {"folder": str(result.folders[hook]), "rows": m.n_rows,
                      "sequences": m.n_contexts, "width": m.width}
               for hook, m in result.manifests.items()}
    print(json.dumps({"caches": summary, "seconds": round(result.seconds, 2)}, indent=2))


def run_images(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from saelab.sources import (
        ImageConfig,
        build_input_cache,
        image_batches,
        list_images,
        load_vision_model,
        sequence_length,
    )

    cfg = from_dict(CacheConfig, args_to_dict(args, CacheConfig))
    images = from_dict(ImageConfig, args_to_dict(args, ImageConfig))
    images.validate()
    paths = list_images(args.images, images.max_images)
    model, processor = load_vision_model(args.model, device=cfg.device)
    seq_len = sequence_length(model, processor, cfg.device)
    per_image = {"cls": 1, "patch": seq_len - images.prefix_tokens, "all": seq_len}[images.tokens]
    print(f"caching {args.hook} of {args.model} over {len(paths)} images ({per_image} rows each) "
          f"-> {args.out}", file=sys.stderr)
    result = build_input_cache(
        model, lambda: image_batches(paths, processor, images, seq_len, cfg.device), args.hook,
        args.out, cfg, max_rows=len(paths) * per_image,
        meta={"model": args.model, "tokenizer": type(processor).__name__,
              "sources": [str(args.images)], "images": images.__dict__,
              "image_files": [str(p) for p in paths]})
    _report(result)
    return 0


def run_proteins(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from saelab.models.hf import load_hf_model
    from saelab.sources import ProteinConfig, build_input_cache, protein_batches, read_fasta

    cfg = from_dict(CacheConfig, args_to_dict(args, CacheConfig))
    proteins = from_dict(ProteinConfig, args_to_dict(args, ProteinConfig))
    proteins.validate()
    records = [r for path in args.fasta for r in read_fasta(path)]
    if proteins.max_sequences:
        records = records[:proteins.max_sequences]
    seqs = [s for _, s in records]
    loaded = load_hf_model(args.model, task="base", device=cfg.device)
    print(f"caching {args.hook} of {args.model} over {len(seqs)} sequences -> {args.out}",
          file=sys.stderr)
    result = build_input_cache(
        loaded.model, lambda: protein_batches(seqs, loaded.tokenizer, proteins, cfg.device),
        args.hook, args.out, cfg, max_rows=len(seqs) * proteins.max_length,
        meta={"model": args.model, "tokenizer": type(loaded.tokenizer).__name__,
              "sources": [str(p) for p in args.fasta], "proteins": proteins.__dict__})
    _report(result)
    return 0
