"""Toy ground-truth benchmark (issue: foundation).

Part 1 — Chanin & Garriga-Alonso's large toy model (50 features in 100 dims, true L0 ≈ 11):
every architecture at its best setting for that L0 (TopK family: k = 11; penalty-based ones: a
small coefficient sweep on one shared stream, the run whose L0 lands closest to 11 is kept).
Prints architecture, L0, explained variance, Stab vs the true features, share recovered, γ.

Part 2 — the Ordered-SAE toy model (d=80, 100 features, L0=5, Zipf 1.2): TopK, Matryoshka and
OSAE over several seeds; prints Stab across seeds (mean over seed pairs), Stab and Ord against the
true features, next to the OSAE paper's numbers.

Usage: python benchmarks/toy_recovery.py [--steps 4000] [--seeds 3] [--out runs/bench_toy]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from saelab.metrics.core import core_metrics
from saelab.metrics.matching import stability
from saelab.registry import architectures
from saelab.toy.generator import ToyConfig, ToyModel
from saelab.toy.recovery import format_table, run_recovery, score_sae, train_toy
from saelab.training.config import TrainConfig

PAPER_OSAE = {"topk": {"stab_seeds": 0.572, "stab_true": 0.479, "ord_true": 0.016},
              "matryoshka": {"stab_seeds": 0.538, "stab_true": 0.502, "ord_true": 0.119},
              "ordered": {"stab_seeds": 0.664, "stab_true": 0.814, "ord_true": 0.734}}


def part1(steps: int, out: Path) -> list[dict]:
    toy = ToyModel(ToyConfig.chanin_large())
    archs = sorted(architectures())
    result = run_recovery(toy, archs, out / "chanin", steps=steps, progress=False)
    print(f"\n## Part 1: chanin_large, true L0 {toy.true_l0:.2f}, {steps} steps x 1024\n")
    print(format_table(result.best, ("name", "l0", "explained_variance", "stability",
                                      "recovered_share", "shrinkage", "orderedness", "dead_share")))
    print("\nall sweep points:")
    print(format_table(result.all_scores, ("name", "l0", "explained_variance", "stability",
                                           "recovered_share", "shrinkage")))
    return [s.row() for s in result.best]


def part2(steps: int, seeds: int, out: Path) -> dict:
    toy = ToyModel(ToyConfig.osae())
    k = round(toy.true_l0)
    specs = {
        "topk": {"architecture": "topk", "d_sae": 100, "k": k},
        "matryoshka": {"architecture": "matryoshka", "d_sae": 100, "k": k,
                       "group_fractions": [0.1, 0.2, 0.3, 0.4], "threshold_start_step": steps // 2,
                       "threshold_beta": 0.99},
        "ordered": {"architecture": "ordered", "d_sae": 100, "k": k},
    }
    decoders: dict[str, list[torch.Tensor]] = {n: [] for n in specs}
    rows: dict[str, list[dict]] = {n: [] for n in specs}
    acts, _ = toy.sample(20000, torch.Generator().manual_seed(999))
    for seed in range(seeds):
        train = TrainConfig(total_tokens=steps * 1024, batch_size=1024, lr=1e-3,
                            lr_warmup_steps=200, checkpoint_every=0, progress=False,
                            dead_after_tokens=100 * 1024, seed=seed)
        saes = train_toy(toy, specs, train, out / f"osae_seed{seed}", data_seed=seed)
        for name, sae in saes.items():
            score = score_sae(name, sae, toy)
            with torch.no_grad():
                codes = sae.encode(acts)
                mse = core_metrics(acts, sae.decode(codes), codes).mse
            decoders[name].append(sae.W_dec.detach().clone())
            rows[name].append({"seed": seed, "stab_true": score.stability,
                               "ord_true": score.orderedness, "l0": score.l0,
                               "explained_variance": score.explained_variance, "mse": mse})
    summary = {}
    print(f"\n## Part 2: OSAE toy model (d=80, g=100, L0={toy.true_l0:.1f}, Zipf 1.2), "
          f"{seeds} seeds, {steps} steps x 1024\n")
    print("| model | Stab(D,D') seeds | Stab(D,D*) | Ord(D,D*) | MSE/elem | EV | paper Stab(D,D') "
          "| paper Stab(D,D*) | paper Ord(D,D*) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in specs:
        pairs = [stability(a, b) for a, b in itertools.combinations(decoders[name], 2)]
        means = {key: statistics.mean(r[key] for r in rows[name])
                 for key in ("stab_true", "ord_true", "mse", "explained_variance", "l0")}
        summary[name] = {"stab_seeds": statistics.mean(pairs) if pairs else float("nan"),
                         **means, "per_seed": rows[name]}
        s, p = summary[name], PAPER_OSAE[name]
        print(f"| {name} | {s['stab_seeds']:.3f} | {s['stab_true']:.3f} | {s['ord_true']:.3f} | "
              f"{s['mse']:.4f} | {s['explained_variance']:.3f} | {p['stab_seeds']} | "
              f"{p['stab_true']} | {p['ord_true']} |")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_toy")
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    out = Path(args.out)
    start = time.perf_counter()
    result: dict = {"steps": args.steps}
    if args.part in ("1", "both"):
        result["chanin_large"] = part1(args.steps, out)
    if args.part in ("2", "both"):
        result["osae"] = part2(args.steps, args.seeds, out)
    result["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy_recovery.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / 'toy_recovery.json'} in {result['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
