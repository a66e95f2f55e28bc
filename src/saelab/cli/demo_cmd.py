"""``saelab demo``: the main job on an embedded default.

By default, on the shipped Othello language model: cache residual-stream activations, train a
TopK and a p-annealing SAE, measure board-state coverage and board reconstruction (thresholds and
labels chosen on training games, scored on held-out games) for the trained and a random-init
model with a linear-probe baseline, write an HTML + Markdown report with plots, and build the
feature store of the TopK SAE (then ``saelab explore`` browses it). ``--toy``
runs the toy ground-truth demo instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from saelab.pipelines.boardgame_demo import OthelloDemoConfig, demo_sae_dir, run_othello_demo
from saelab.toy.generator import ToyConfig, ToyModel
from saelab.toy.recovery import format_table, run_recovery
from saelab.toy.report import write_report

TOY_ARCHS = ["relu", "gated", "topk", "batchtopk", "jumprelu", "matryoshka", "ordered"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the built-in demo (Othello SAEs, a few minutes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--toy", action="store_true",
                   help="run the toy ground-truth demo (7 architectures, 50 known features)")
    p.add_argument("--steps", type=int, default=2000, help="toy demo: training steps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    out = Path(args.out)
    if not args.toy:
        run_othello_demo(out, OthelloDemoConfig())
        print(f"report: {out / 'report.html'}")
        print(f"browse the TopK SAE's latents: saelab explore {demo_sae_dir(out)}")
        return 0
    torch.set_num_threads(1)  # toy matrices are tiny: extra threads only add overhead
    start = time.perf_counter()
    toy = ToyModel(ToyConfig.chanin_large())
    result = run_recovery(toy, TOY_ARCHS, out / "runs", steps=args.steps)
    print(format_table(result.best))
    report = write_report(out, "saelab demo: recovering 50 known features", result.best,
                          result.saes, toy,
                          notes=f"Toy model: 50 features in 100 dims, true L0 {toy.true_l0:.2f}, "
                          f"correlated firing. {args.steps} steps of 1024 rows per SAE; "
                          f"finished in {time.perf_counter() - start:.0f} s.")
    print(f"report: {report}")
    return 0
