"""``saelab eval``: core metrics of a saved SAE on an activation file, as JSON + a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saelab.cli import eval_concepts
from saelab.cli.results import results_path, write_or_print
from saelab.config import add_arguments, args_to_dict, from_dict
from saelab.evals import core
from saelab.io import atomic_write_json, load
from saelab.metrics.seeds import cross_seed_consistency, summarise_seeds


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a saved SAE on activations",
                       description="Evaluate a saved SAE (folder with cfg.json + sae.safetensors) "
                       "on an activation file: L0, explained variance, MSE, cosine, shrinkage, "
                       "firing density (histogram plot), dead and dense latents. Formulas: "
                       "docs/metrics.md.")
    p.add_argument("sae", nargs="+", help="SAE folder; several folders (e.g. the seeds of one "
                   "SAE, runs/x/final/topk_seed*) give mean ± 95%% interval over them and "
                   "Stab/Ord between their decoders, or are compared by the concept suite")
    p.add_argument("--data", help="activations: .npy or .safetensors file, or a `saelab cache` "
                   "folder; --suite core only")
    p.add_argument("--data-key", default="",
                   help="tensor name inside a .safetensors file with several tensors")
    p.add_argument("--data-pair", dest="pair", nargs="+", default=[], metavar="PATH",
                   help="further activations read row by row with --data (a transcoder's "
                   "target, a crosscoder's other layers)")
    p.add_argument("--suite", choices=eval_concepts.SUITES, default="core",
                   help="core metrics (default), the concept suite (absorption, sparse probing, "
                   "monosemanticity, concept cones) or one of those")
    p.add_argument("--out", help="core: results JSON file, or a folder to write eval.json into "
                   "(default: <sae>/eval.json; with several SAEs each gets its own and the "
                   "summary goes to --out); concept suite: a folder (default: <sae>/concepts)")
    p.add_argument("--no-plot", action="store_true", help="skip the density histogram PNG")
    add_arguments(p.add_argument_group("evaluation options"), core.CoreEvalConfig)
    eval_concepts.add_concept_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.suite != "core":
        return eval_concepts.run(args)
    if args.data is None:
        parser.error("--suite core evaluates SAEs on --data ACTIVATIONS")
    cfg = from_dict(core.CoreEvalConfig, args_to_dict(args, core.CoreEvalConfig))
    cfg.validate()
    if len(args.sae) > 1:
        return run_seeds(args, cfg)
    args.sae = args.sae[0]
    out = results_path(args.out, Path(args.sae), "eval.json")
    sae = load(args.sae)
    result = core.run(sae, args.sae, args.data, cfg, data_key=args.data_key, pair=args.pair)
    scalars = result.scalars()
    print(core.summary_table(list(scalars.items())))
    write_or_print(out, result.to_dict(), result.write)
    if not args.no_plot:
        png = core.density_histogram(result, out.with_suffix(".density.png"))
        print(f"density histogram: {png}")
    print(f"results: {out}")
    print(json.dumps({"explained_variance": scalars["explained_variance"], "l0": scalars["l0"]}))
    return 0


def run_seeds(args: argparse.Namespace, cfg: core.CoreEvalConfig) -> int:
    """Evaluate several SAEs (seeds) and summarise: mean ± 95% interval, Stab/Ord across them."""
    if not args.out:
        raise ValueError("with several SAEs, pass --out FILE for the summary JSON")
    saes = [load(path) for path in args.sae]
    rows = []
    for path, sae in zip(args.sae, saes, strict=True):
        result = core.run(sae, path, args.data, cfg, data_key=args.data_key, pair=args.pair)
        result.write(Path(path) / "eval.json")
        rows.append(result.scalars())
    summary = summarise_seeds(rows)
    consistency = cross_seed_consistency([s.W_dec.detach() for s in saes])
    print(f"{len(saes)} SAEs; mean ± half-width of the 95% t-interval over them")
    width = max(len(k) for k in summary)
    for name, ci in summary.items():
        print(f"{name.ljust(width)}  {ci}")
    print(f"{'stability'.ljust(width)}  {consistency.stability}  (Stab between seeds' decoders)")
    print(f"{'orderedness'.ljust(width)}  {consistency.orderedness}  (Ord between seeds' decoders)")
    atomic_write_json(Path(args.out), {"saes": list(args.sae), "data": args.data,
                                       "per_sae": rows,
                                       "summary": {k: v.to_dict() for k, v in summary.items()},
                                       "across_seeds": consistency.to_dict()})
    print(f"results: {args.out}")
    return 0
