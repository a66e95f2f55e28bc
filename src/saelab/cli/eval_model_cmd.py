"""``saelab eval-model``: an SAE spliced into its model — CE loss recovered, KL, core metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saelab.cli.results import results_path, write_or_print
from saelab.config import add_arguments, args_to_dict, from_dict
from saelab.evals import model as model_eval
from saelab.evals.core import summary_table
from saelab.io import load
from saelab.text.packing import TextConfig

EPILOG = """examples:
  saelab eval-model runs/topk/final/topk --model gpt2 --hook transformer.h.5 --text held_out.txt
  saelab eval-model runs/x/final/relu --model ./minilm --hook encoder.layer.3 --text notes.jsonl
--model and --hook default to the SAE's model_name and hook_name when those were recorded.
Formulas and choices: docs/eval_model.md."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval-model", help="evaluate a saved SAE spliced into its model",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae", help="SAE folder (cfg.json + sae.safetensors)")
    p.add_argument("--model", help="Hugging Face hub id or local model folder")
    p.add_argument("--hook", help="module path the SAE reads, e.g. transformer.h.5")
    p.add_argument("--text", nargs="+", action="extend", default=[], required=True,
                   help="text sources: .txt, .jsonl, .parquet or a saved datasets folder")
    p.add_argument("--out", help="results JSON file, or a folder to write eval_model.json into "
                   "(default: <sae>/eval_model.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the density histogram PNG")
    add_arguments(p.add_argument_group("evaluation options"), model_eval.ModelEvalConfig)
    add_arguments(p.add_argument_group("text options"), TextConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    cfg = from_dict(model_eval.ModelEvalConfig, args_to_dict(args, model_eval.ModelEvalConfig))
    text = from_dict(TextConfig, args_to_dict(args, TextConfig))
    out = results_path(args.out, Path(args.sae), "eval_model.json")
    sae = load(args.sae, device=cfg.device)
    model_name = args.model or sae.cfg.model_name
    hook = args.hook or sae.cfg.hook_name
    if not model_name or not hook:
        raise ValueError(f"the SAE at {args.sae} records no model_name/hook_name; pass --model "
                         "and --hook")
    result = model_eval.run(sae, args.sae, model_name, hook, list(args.text), text, cfg)
    print(summary_table(result.scalars()))
    write_or_print(out, result.to_dict(), result.write)
    if not args.no_plot:
        print(f"density histogram: {result.density_plot(out.with_suffix('.density.png'))}")
    print(f"results: {out}")
    headline = {"explained_variance": result.metrics.explained_variance, "l0": result.metrics.l0}
    if result.downstream:
        headline.update(ce_loss_recovered=result.downstream.ce_loss_recovered,
                        kl_score=result.downstream.kl_score)
    print(json.dumps(headline))
    return 0
