"""``saelab toy``: train SAEs on toy data with known features and score their recovery."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from saelab.registry import architectures
from saelab.toy.generator import ToyModel
from saelab.toy.recovery import PRESETS, format_table, run_recovery
from saelab.toy.report import write_report


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "toy", help="toy ground-truth benchmark: do SAEs recover known features?",
        description="Train SAEs on synthetic activations built from known feature directions "
        "and report L0, explained variance, Stab (mean matched cosine to the true features), "
        "orderedness, the share of features recovered at cos > 0.9, and shrinkage. Writes "
        "results.json, report.md, report.html and recovery.png to --out.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="chanin_large",
                   help="toy model: chanin_large (g=50, d=100, L0≈11), osae (g=100, d=80, L0=5, "
                   "Zipf 1.2), chanin_small (g=5, d=20, L0=2), hierarchical (g=40 in d=32, "
                   "parent/child hierarchies, data mean, L0=5.2)")
    p.add_argument("--archs", default=",".join(sorted(architectures())),
                   help="comma-separated architectures (default: all)")
    p.add_argument("--steps", type=int, default=3000, help="training steps")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="rows per optimiser step (default: 1024)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate of every SAE (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the toy model and the SAEs")
    p.add_argument("--d-sae", type=int, default=0, help="latents (default: number of true features)")
    p.add_argument("--out", default="runs/toy", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    torch.set_num_threads(1)  # toy matrices are tiny: extra threads only add overhead
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(architectures()))
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; known: {sorted(architectures())}")
    toy = ToyModel(PRESETS[args.preset](seed=args.seed))
    out = Path(args.out)
    print(f"toy model {args.preset}: {toy.cfg.n_features} features in {toy.cfg.d_model} dims, "
          f"true L0 {toy.true_l0:.2f}; training {len(archs)} architecture(s)", file=sys.stderr)
    result = run_recovery(toy, archs, out / "runs", steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed, d_sae=args.d_sae or None,
                          progress=not args.no_progress)
    print(format_table(result.best))
    report = write_report(out, f"saelab toy recovery: {args.preset}", result.best, result.saes,
                          toy, notes=f"{args.steps} steps × {args.batch_size} rows; "
                          f"true L0 {toy.true_l0:.2f}")
    print(f"report: {report}")
    return 0
