"""``saelab export``: write a saelab SAE as a SAELens or dictionary_learning folder, in a Hugging
Face Hub-style layout with a model card."""

from __future__ import annotations

import argparse
import json
from typing import Any

from saelab.interop import export
from saelab.io import load

EPILOG = """examples:
  saelab export runs/topk/final/topk --to saelens --out hub/my-saes
  saelab export runs/x/final/jumprelu --to dictionary_learning --out hub/my-saes --sae-id layer3
Then upload hub/my-saes with your own Hub tools (huggingface-cli upload ...). saelab.load reads
the exported folders back, as it reads any SAELens or dictionary_learning folder."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export an SAE to SAELens / dictionary_learning format",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae", help="SAE folder (saelab, SAELens or dictionary_learning)")
    p.add_argument("--to", required=True, choices=["saelens", "dictionary_learning", "saelab"],
                   help="format to write")
    p.add_argument("--out", required=True, help="export folder (Hub layout: OUT/SAE_ID/ + README.md)")
    p.add_argument("--sae-id", default="", help="sub-folder name (default: the hook name)")
    p.add_argument("--model-name", default="", help="set the model name recorded with the SAE")
    p.add_argument("--hook-name", default="", help="set the hook name recorded with the SAE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/SAE_ID")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    sae = load(args.sae)
    if args.model_name:
        sae.cfg.model_name = args.model_name
    if args.hook_name:
        sae.cfg.hook_name = args.hook_name
    result = export(sae, args.out, args.to, sae_id=args.sae_id, overwrite=args.overwrite,
                    source=str(args.sae))
    print(json.dumps({"exported": str(result.folder), "format": result.fmt,
                      "model_card": str(result.card), "architecture": sae.name}, indent=2))
    return 0
