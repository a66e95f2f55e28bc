"""``saelab eval``: core metrics of a saved SAE on an activation file, as JSON + a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saelab.cli import eval_concepts
from saelab.config import add_arguments, args_to_dict, from_dict
from saelab.evals import core
from saelab.io import load


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a saved SAE on activations",
                       description="Evaluate a saved SAE (folder with cfg.json + sae.safetensors) "
                       "on an activation file: L0, explained variance, MSE, cosine, shrinkage, "
                       "firing density (histogram plot), dead and dense latents. Formulas: "
                       "docs/metrics.md.")
    p.add_argument("sae", nargs="+", help="SAE folder (several for the concept suite)")
    p.add_argument("--data", help="activation file (.npy or .safetensors); --suite core only")
    p.add_argument("--suite", choices=eval_concepts.SUITES, default="core",
                   help="core metrics (default), the concept suite (absorption, sparse probing, "
                   "monosemanticity, concept cones) or one of those")
    p.add_argument("--out", help="write results JSON here (default: <sae>/eval.json); for the "
                   "concept suite a folder (default: <sae>/concepts)")
    p.add_argument("--no-plot", action="store_true", help="skip the density histogram PNG")
    add_arguments(p.add_argument_group("evaluation options"), core.CoreEvalConfig)
    eval_concepts.add_concept_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.suite != "core":
        return eval_concepts.run(args)
    if args.data is None or len(args.sae) != 1:
        parser.error("--suite core evaluates one SAE on --data ACTIVATIONS")
    args.sae = args.sae[0]
    cfg = from_dict(core.CoreEvalConfig, args_to_dict(args, core.CoreEvalConfig))
    sae = load(args.sae)
    result = core.run(sae, args.sae, args.data, cfg)
    out = Path(args.out) if args.out else Path(args.sae) / "eval.json"
    result.write(out)
    scalars = result.metrics.to_dict()
    print(core.summary_table([(k, v) for k, v in scalars.items()]))  # type: ignore[misc]
    if not args.no_plot:
        png = core.density_histogram(result, out.with_suffix(".density.png"))
        print(f"density histogram: {png}")
    print(f"results: {out}")
    print(json.dumps({"explained_variance": scalars["explained_variance"], "l0": scalars["l0"]}))
    return 0
