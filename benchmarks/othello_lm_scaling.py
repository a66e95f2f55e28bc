"""Small scaling curve of Othello GPTs on this machine: which size to train for longer?

Each config trains with ``saelab.training.game_lm.train_lm`` (seeded random games, legal-move targets, one torch thread)
for its number of games, then is scored on held-out games: top-1 legal (``saelab boardgame
lm-eval``'s measure) and the 3-way board probe at the hooked layer
(``saelab.pipelines.board_probe``). Prints one JSON object: per config the parameters, games,
tokens, training seconds, estimated training FLOPs (6 × parameters × tokens) and the scores.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/othello_lm_scaling.py --out runs/scaling
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from saelab.boardgame import lm
from saelab.pipelines.board_probe import othello_board_probe
from saelab.training.game_lm import train_lm

# (n_layer, d_model, n_head, train_games): the game counts roughly match training seconds
DEFAULT_CONFIGS = ["4x128x4:24000", "4x192x4:12000", "4x256x8:8000", "6x192x4:8000"]


def parse(spec: str) -> tuple[int, int, int, int]:
    shape, games = spec.split(":")
    n_layer, d_model, n_head = (int(x) for x in shape.split("x"))
    return n_layer, d_model, n_head, int(games)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help="LAYERSxWIDTHxHEADS:GAMES entries")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-games", type=int, default=500)
    ap.add_argument("--probe-games", type=int, default=500)
    ap.add_argument("--out", default="runs/othello_lm_scaling")
    args = ap.parse_args()
    rows = []
    for spec in args.configs:
        n_layer, d_model, n_head, games = parse(spec)
        cfg = lm.LMTrainConfig(game="othello", n_layer=n_layer, d_model=d_model, n_head=n_head,
                               train_games=games, batch_size=args.batch_size, lr=args.lr,
                               eval_games=args.eval_games, threads=1)
        out = Path(args.out) / spec.replace(":", "_")
        print(f"training {spec} ...", file=sys.stderr, flush=True)
        meta = train_lm(cfg, out, progress_seconds=60)
        model, _ = lm.load_game_lm(out)
        start = time.time()
        probe = othello_board_probe(model, train_games=args.probe_games,
                                    test_games=args.probe_games)
        params = sum(p.numel() for p in model.parameters())
        tokens = games * (lm.othello.MAX_MOVES - 1)
        row = {"config": spec, "n_layer": n_layer, "d_model": d_model, "params": params,
               "games": games, "tokens": tokens, "train_seconds": meta["train_seconds"],
               "train_flops": 6 * params * tokens, "final_loss": meta["final_loss"],
               "top1_legal": meta["legal_move_accuracy"]["top1_legal"],
               "probe_layer": probe.layer, "probe_square_accuracy": probe.square_accuracy,
               "probe_mine_theirs_accuracy": probe.mine_theirs_accuracy,
               "probe_seconds": round(time.time() - start, 1)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    print(json.dumps({"benchmark": "othello_lm_scaling", "torch_threads": torch.get_num_threads(),
                      "batch_size": args.batch_size, "lr": args.lr, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
