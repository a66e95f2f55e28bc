"""Top-1 legal of two Othello game LMs on the same held-out games, with a paired bootstrap.

Each model predicts the next move at every position of the same seeded held-out games (the
definition of ``saelab.boardgame.lm.othello_legal_accuracy``); the difference's 95% interval
comes from resampling whole games, since positions of one game are not independent. Prints one
JSON line.

    python benchmarks/othello_lm_paired.py RUN_A othello --games 2000
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from saelab.boardgame import lm, othello


def hits_per_game(model_path: str, games: othello.OthelloGames) -> tuple[np.ndarray, np.ndarray]:
    """(legal top-1 predictions, scored positions) for every game."""
    model, game = lm.load_game_lm(model_path)
    if game != "othello":
        raise SystemExit(f"{model_path} is a {game} model; this compares Othello models")
    tokens = torch.from_numpy(games.tokens())[:, :-1]
    logits = lm._logits(model, tokens)[..., 1:]  # the pad token is never a prediction
    top = othello.tokens_to_squares(logits.argmax(-1).numpy() + 1)
    legal = othello.unpack_bits(games.next_legal[:, :-1])
    hit = np.take_along_axis(legal, top[..., None], axis=-1)[..., 0]
    scored = games.moves[:, 1:] >= 0
    return (hit & scored).sum(axis=1), scored.sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--games", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="held-out seed (as lm-eval's)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    games = othello.random_games(args.games, lm.held_out_seed(args.seed))
    a, n = hits_per_game(args.model_a, games)
    b, _ = hits_per_game(args.model_b, games)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(args.resamples):
        i = rng.integers(0, len(n), len(n))
        diffs.append((a[i].sum() - b[i].sum()) / n[i].sum())
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    print(json.dumps({"games": args.games, "model_a": args.model_a, "model_b": args.model_b,
                      "top1_legal_a": float(a.sum() / n.sum()),
                      "top1_legal_b": float(b.sum() / n.sum()),
                      "difference": float((a.sum() - b.sum()) / n.sum()),
                      "ci95": [float(lo), float(hi)]}))


if __name__ == "__main__":
    main()
