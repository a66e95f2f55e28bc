"""``saelab demo``: the main job on an embedded default — a toy ground-truth run and report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from saelab.toy.generator import ToyConfig, ToyModel
from saelab.toy.recovery import format_table, run_recovery
from saelab.toy.report import write_report

DEMO_ARCHS = ["relu", "gated", "topk", "batchtopk", "jumprelu", "matryoshka", "ordered"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the built-in demo (toy ground truth, a few minutes)",
                       description="Train seven SAE architectures on toy activations with 50 "
                       "known features (Chanin & Garriga-Alonso's large toy model) and write an "
                       "HTML/Markdown report with plots of how well each recovers them.")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    torch.set_num_threads(1)  # toy matrices are tiny: extra threads only add overhead
    start = time.perf_counter()
    toy = ToyModel(ToyConfig.chanin_large())
    out = Path(args.out)
    result = run_recovery(toy, DEMO_ARCHS, out / "runs", steps=args.steps)
    print(format_table(result.best))
    report = write_report(out, "saelab demo: recovering 50 known features", result.best,
                          result.saes, toy,
                          notes=f"Toy model: 50 features in 100 dims, true L0 {toy.true_l0:.2f}, "
                          f"correlated firing. {args.steps} steps of 1024 rows per SAE; "
                          f"finished in {time.perf_counter() - start:.0f} s.")
    print(f"report: {report}")
    return 0
