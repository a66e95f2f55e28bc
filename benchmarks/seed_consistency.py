"""Real activations (MiniLM layer 3, the README's model and corpus): the correct-L0 proxy curve
with seed intervals, the L0 it picks, and Stab/Ord across seeds for TopK, Matryoshka and OSAE.

Needs an activation cache made by the README's step 1, e.g.

    saelab cache --model $MINILM --hook encoder.layer.3 --text $CORPUS --max-tokens 50000 --out runs/minilm_cache

Part 1: `saelab.search.l0` with TopK over --ks × --seeds (one pass over the cache per seed).
Part 2: TopK (reused from part 1 at --k), Matryoshka and Ordered (OSAE) at k = --k, --seeds
seeds each; Stab and Ord between every pair of seeds' decoders (Hungarian on |cos|), over all
latents and over the first --prefix latents, plus each architecture's EV and L0 (mean ± 95%).

The OSAE paper claims OSAE is more consistent across seeds (higher Stab, and Ord far above 0);
the JSON says whether that holds here.

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/seed_consistency.py --cache runs/minilm_cache
       [--total-tokens 100000] [--expansion 2] [--seeds 3] [--k 32] [--out runs/bench_seeds]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saelab.data.open import open_source
from saelab.metrics.seeds import cross_seed_consistency, mean_ci
from saelab.registry import config_from_dict
from saelab.run_config import DataConfig
from saelab.search.l0 import L0SearchConfig, evaluate_sae, run_l0_search, sae_name
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer


def train_config(args: argparse.Namespace, seed: int = 0) -> TrainConfig:
    return TrainConfig(total_tokens=args.total_tokens, batch_size=args.batch_size, lr=args.lr,
                       lr_warmup_steps=10, checkpoint_every=50, log_every=10,
                       dead_after_tokens=args.total_tokens // 4, progress=False,
                       measure_peak=False, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--total-tokens", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--expansion", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prefix", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_seeds"))
    args = parser.parse_args()
    started = time.time()
    data = DataConfig(path=str(args.cache))
    eval_acts = open_source(data, 10**6).sample(args.eval_rows)
    result: dict = {"cache": str(args.cache), "total_tokens": args.total_tokens,
                    "expansion": args.expansion, "seeds": args.seeds, "k": args.k}

    search = L0SearchConfig(architecture="topk", l0s=args.ks, seeds=args.seeds,
                            expansion=args.expansion, eval_rows=args.eval_rows)
    found = run_l0_search(lambda s: open_source(data, s), search, train_config(args),
                          args.out / "search", eval_acts)
    print((args.out / "search" / "report.md").read_text(), flush=True)
    result["l0_search"] = {"chosen_l0": found.chosen_l0, "warnings": found.warnings,
                           "curve": {p.k: {m: p.summary[m].to_dict()
                                           for m in ("c_dec", "s_n_dec", "l0", "mse",
                                                     "explained_variance")}
                                     for p in found.points}}

    from saelab.io import load
    decoders: dict[str, list[torch.Tensor]] = {"topk": [], "matryoshka": [], "ordered": []}
    evals: dict[str, list[dict[str, float]]] = {n: [] for n in decoders}
    for seed in range(args.seeds):
        topk = load(args.out / "search" / "saes" / sae_name(args.k, seed))
        decoders["topk"].append(topk.W_dec.detach())
        evals["topk"].append(evaluate_sae(topk, eval_acts, None, 1024))
        cfgs = {"matryoshka": config_from_dict({"architecture": "matryoshka", "k": args.k,
                                                "expansion": args.expansion,
                                                "threshold_start_step": 0}),
                "ordered": config_from_dict({"architecture": "ordered", "k": args.k,
                                             "expansion": args.expansion})}
        trainer = Trainer(cfgs, train_config(args, seed), open_source(data, seed),
                          args.out / f"nested_seed{seed}")
        for name, sae in trainer.fit().items():
            decoders[name].append(sae.W_dec.detach())
            evals[name].append(evaluate_sae(sae, eval_acts, None, 1024))
    rows = {}
    print(f"\n| architecture | Stab across seeds | Ord across seeds | Stab, first {args.prefix} | "
          f"Ord, first {args.prefix} | EV | L0 | c_dec |")
    print("|---|---|---|---|---|---|---|---|")
    for name, decs in decoders.items():
        full = cross_seed_consistency(decs)
        prefix = cross_seed_consistency(decs, prefix=args.prefix)
        ev = mean_ci([e["explained_variance"] for e in evals[name]])
        l0 = mean_ci([e["l0"] for e in evals[name]])
        c_dec = mean_ci([e["c_dec"] for e in evals[name]])
        rows[name] = {"all_latents": full.to_dict(), f"first_{args.prefix}": prefix.to_dict(),
                      "explained_variance": ev.to_dict(), "l0": l0.to_dict(),
                      "c_dec": c_dec.to_dict()}
        print(f"| {name} | {full.stability} | {full.orderedness} | {prefix.stability} | "
              f"{prefix.orderedness} | {ev} | {l0} | {c_dec} |")
    result["consistency"] = rows
    stab = {n: rows[n]["all_latents"]["stability"]["mean"] for n in rows}
    result["osae_most_stable"] = stab["ordered"] > max(stab["topk"], stab["matryoshka"])
    result["osae_most_stable_prefix"] = (
        rows["ordered"][f"first_{args.prefix}"]["stability"]["mean"]
        > max(rows[n][f"first_{args.prefix}"]["stability"]["mean"] for n in ("topk", "matryoshka")))
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
