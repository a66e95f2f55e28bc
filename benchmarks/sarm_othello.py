"""SARM on the Othello preference task (issue 14): pairwise accuracy of reward heads on SAE
latents against a linear head on the raw activations, with the engine's own agreement with a
deeper search as the reference, over seeds.

Per seed: a TopK SAE is trained on the shipped Othello GPT's residual stream (seeded games and
initialisation), train and test move pairs are drawn from disjoint seeded games and labelled by
the depth-2 search (saelab.sarm.othello), and these reward models are trained with the
Bradley–Terry loss (+ λ·NMSE when the SAE trains) and scored on the test pairs:

- sarm_head: head on the SAE pre-activations, SAE and backbone frozen (SARM's default features)
- sarm_head_sae: head + SAE trained (λ = 1 NMSE on the detached activations)
- sarm_codes_head: head on the TopK codes (sparse), frozen SAE
- linear_raw: the baseline, a linear head on the standardised activation (no SAE)

Engine rows: depth-1 and depth-4 search agreement with the depth-2 labels on the test pairs.
The top-weighted latents of seed 0's sarm_head are listed with their best-matching board cell.

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sarm_othello.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from saelab.boardgame.demo import train_saes

from saelab.architectures.base import SAE
from saelab.boardgame import lm
from saelab.boardgame.activations import SAE_GAMES_SEED, game_activations, write_npy
from saelab.evals.boardgame import default_layer
from saelab.registry import config_from_dict
from saelab.sarm import SARM, SARMConfig, SARMTrainConfig, train_sarm
from saelab.sarm.othello import board_latent_labels, engine_agreement, preference_pairs
from saelab.sarm.train import pair_acts, pairwise_accuracy

VARIANTS = (("sarm_head", "pre_acts", "head"), ("sarm_head_sae", "pre_acts", "head_sae"),
            ("sarm_codes_head", "codes", "head"), ("linear_raw", "raw", "head"))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_seed(seed: int, args: argparse.Namespace, model: torch.nn.Module, layer: int
             ) -> dict[str, Any]:
    start = time.perf_counter()
    acts = game_activations(model, "othello", layer, args.sae_games, seed=SAE_GAMES_SEED + seed)
    path = write_npy(args.out / f"acts_seed{seed}.npy", acts)
    cfg = config_from_dict({"architecture": "topk", "k": args.k, "expansion": args.expansion})
    sae: SAE = train_saes(path, {"topk": cfg}, args.out / f"sae_seed{seed}", args.sae_tokens,
                          512, 2e-3, seed=seed)["topk"]
    _log(f"seed {seed}: SAE trained ({time.perf_counter() - start:.0f} s)")
    train = preference_pairs(args.train_pairs, seed=10 * seed)
    test = preference_pairs(args.test_pairs, seed=10 * seed + 1)
    _log(f"seed {seed}: {len(train)} + {len(test)} pairs ({time.perf_counter() - start:.0f} s)")
    out: dict[str, Any] = {"seed": seed, "accuracy": {}, "train_accuracy": {}}
    heads: dict[str, SARM] = {}
    hook = f"transformer.h.{layer}"
    # one frozen backbone: its activations are computed once and shared by every head
    reader = SARM(model, SARMConfig(hook=hook, features="raw"), d_in=acts.shape[1])
    train_acts = pair_acts(reader, train.tokens)
    test_acts = pair_acts(reader, test.tokens, keep_tokens=False)
    for name, features, mode in VARIANTS:
        sarm = SARM(model, SARMConfig(hook=hook, features=features),  # type: ignore[arg-type]
                    None if features == "raw" else copy.deepcopy(sae), d_in=acts.shape[1])
        train_sarm(sarm, train.tokens, SARMTrainConfig(mode=mode, epochs=args.epochs,  # type: ignore[arg-type]
                                                       batch_size=64, lr=args.lr, seed=seed,
                                                       log_every=0), acts=train_acts)
        with torch.no_grad():
            for key, (h_c, h_r, _) in (("accuracy", test_acts), ("train_accuracy", train_acts)):
                out[key][name] = pairwise_accuracy(sarm.reward_from_acts(h_c),
                                                   sarm.reward_from_acts(h_r))
        heads[name] = sarm
        _log(f"seed {seed}: {name} test accuracy {out['accuracy'][name]:.3f}")
    out["engine_depth1_vs_labels"] = engine_agreement(test, 1)
    out["engine_depth4_vs_labels"] = engine_agreement(test, args.deep_depth, args.deep_pairs)
    out["seconds"] = time.perf_counter() - start
    if seed == args.seeds[0]:
        out["top_latents"] = top_latents(heads["sarm_head"], sae, model, layer, test, args.top)
    return out


@torch.no_grad()
def top_latents(sarm: SARM, sae: SAE, model: torch.nn.Module, layer: int, test: Any,
                top: int) -> list[dict[str, Any]]:
    """Latents ranked by |w_j|·std(z_j) over the test pairs (a weight's reach at typical z)."""
    h_c, h_r, _ = pair_acts(sarm, test.tokens, keep_tokens=False)
    z = sarm.latents(torch.cat([h_c, h_r]))
    w = sarm.head.weight[0]
    reach = w.abs() * z.std(0)
    labels = board_latent_labels(sae, model, layer)
    return [{"latent": int(j), "weight": float(w[j]), "z_std": float(z[:, j].std()),
             "label": labels[int(j)][0], "label_f1": round(labels[int(j)][1], 3)}
            for j in reach.argsort(descending=True)[:top]]


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [*results[0]["accuracy"], "engine_depth1_vs_labels", "engine_depth4_vs_labels"]
    table = {}
    for key in keys:
        values = [r["accuracy"][key] if key in r["accuracy"] else r[key] for r in results]
        table[key] = {"mean": statistics.mean(values),
                      "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                      "values": values}
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-pairs", type=int, default=2000)
    p.add_argument("--test-pairs", type=int, default=600)
    p.add_argument("--sae-games", type=int, default=800)
    p.add_argument("--sae-tokens", type=int, default=150_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--deep-depth", type=int, default=4)
    p.add_argument("--deep-pairs", type=int, default=100)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/bench_sarm_othello"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _ = lm.load_game_lm("othello")
    layer = default_layer(model) if args.layer < 0 else args.layer
    results = [run_seed(s, args, model, layer) for s in args.seeds]
    summary = summarise(results)
    print(f"{'reward model':<26} {'test pairwise accuracy (mean ± std over seeds)'}")
    for key, row in summary.items():
        print(f"{key:<26} {row['mean']:.3f} ± {row['std']:.3f}   "
              + " ".join(f"{v:.3f}" for v in row["values"]))
    print(json.dumps({"layer": layer, "sizes": {k: v for k, v in vars(args).items()
                                                if k != "out"},
                      "summary": summary, "per_seed": results}, default=str))


if __name__ == "__main__":
    main()
