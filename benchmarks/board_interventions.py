"""Board-state interventions on the shipped Othello GPT (issue 14), after Li et al. 2023: turn a
square from "mine" to "theirs" inside the model through SAE latents (per architecture) or along
linear-probe directions, and count the model's legal-move errors against the edited board
before and after the edit (definitions: saelab.steer.board).

Per seed: SAEs of several architectures are trained side by side on the residual stream after
block --layer (seeded games and initialisation; the TopK family at fixed k, the penalty-based
ones at one coefficient each: compare their L0 before comparing edits), then the same sampled
cases are edited by every SAE and by the probe.

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/board_interventions.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from saelab.boardgame.demo import train_saes

from saelab.boardgame import lm
from saelab.boardgame.activations import SAE_GAMES_SEED, game_activations, write_npy
from saelab.io import load
from saelab.registry import config_from_dict
from saelab.steer import board


def sae_configs(k: int, expansion: int, steps: int) -> dict[str, Any]:
    base = {"expansion": expansion}
    return {name: config_from_dict({**spec, **base}) for name, spec in {
        "topk": {"architecture": "topk", "k": k},
        "batchtopk": {"architecture": "batchtopk", "k": k, "threshold_start_step": steps // 2},
        "relu": {"architecture": "relu", "l1_coefficient": 4.0},
        "panneal": {"architecture": "panneal", "l1_coefficient": 4.0},
        "gated": {"architecture": "gated", "l1_coefficient": 8.0},
    }.items()}


@torch.no_grad()
def l0(sae: torch.nn.Module, acts: torch.Tensor) -> float:
    return float((sae.encode(acts) != 0).float().sum(1).mean())  # type: ignore[operator]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--sae-games", type=int, default=600)
    p.add_argument("--sae-tokens", type=int, default=100_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--train-games", type=int, default=150)
    p.add_argument("--test-games", type=int, default=100)
    p.add_argument("--cases", type=int, default=600)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--reuse-saes", action="store_true",
                   help="load the SAEs a previous run left in --out instead of training")
    p.add_argument("--out", type=Path, default=Path("runs/bench_board_interventions"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _ = lm.load_game_lm("othello")
    per_seed = []
    for seed in args.seeds:
        start = time.perf_counter()
        acts = game_activations(model, "othello", args.layer, args.sae_games,
                                seed=SAE_GAMES_SEED + seed)
        final = args.out / f"saes_seed{seed}" / "final"
        if args.reuse_saes and final.is_dir():
            saes = {p.name: load(p) for p in sorted(final.iterdir()) if p.is_dir()}
        else:
            path = write_npy(args.out / f"acts_seed{seed}.npy", acts)
            saes = train_saes(path, sae_configs(args.k, args.expansion, args.sae_tokens // 512),
                              args.out / f"saes_seed{seed}", args.sae_tokens, 512, 2e-3,
                              seed=seed)
        sample = torch.from_numpy(acts[:20_000])
        l0s = {name: l0(sae, sample) for name, sae in saes.items()}
        print(f"seed {seed}: SAEs trained in {time.perf_counter() - start:.0f} s; L0 "
              + ", ".join(f"{n} {v:.1f}" for n, v in l0s.items()), file=sys.stderr, flush=True)
        cfg = board.BoardInterventionConfig(layer=args.layer, train_games=args.train_games,
                                            test_games=args.test_games, cases=args.cases,
                                            strength=args.strength, seed=seed)
        result = board.run(model, saes, cfg)
        print(f"[seed {seed}, layer {args.layer}, {result.n_valid_cases} valid cases]\n"
              + board.format_table(result), flush=True)
        per_seed.append({"seed": seed, "l0": l0s, "seconds": time.perf_counter() - start,
                         **result.to_dict()})
    methods = [s["method"] for s in per_seed[0]["scores"]]
    summary: dict[str, Any] = {}
    fields = [f.name for f in dataclasses.fields(board.InterventionScores)
              if f.name not in ("method", "n_cases")]
    for i, method in enumerate(methods):
        summary[method] = {}
        for name in fields:
            values = [r["scores"][i][name] for r in per_seed]
            summary[method][name] = {"mean": statistics.mean(values),
                                     "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    print(f"\nmean ± std over seeds {args.seeds}:")
    print(f"{'method':<16} {'err clean':>13} {'err before':>13} {'err after':>13} "
          f"{'0-error share':>13} {'cell F1':>7}")
    for method, row in summary.items():
        cell = [f"{row[k]['mean']:.3f}±{row[k]['std']:.3f}" for k in
                ("errors_clean", "errors_before", "errors_after", "full_success")]
        print(f"{method:<16} {cell[0]:>13} {cell[1]:>13} {cell[2]:>13} {cell[3]:>13} "
              f"{row['cell_f1']['mean']:>7.3f}")
    print(json.dumps({"sizes": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                      "per_seed": per_seed}))


if __name__ == "__main__":
    main()
