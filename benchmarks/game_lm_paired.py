"""Legal-move accuracies of two game LMs on the same held-out games, with a paired bootstrap.

Both models play the same seeded held-out games (``saelab boardgame lm-eval``'s, so the numbers
equal its own): Othello's top-1 legal; chess's first character legal on every game and the
greedy-decoded move legal on the first ``--greedy-games``. Each difference's 95% interval comes
from resampling whole games, since the positions of one game are not independent. Prints one
JSON line.

    python benchmarks/game_lm_paired.py RUN_A othello --games 2000
    python benchmarks/game_lm_paired.py RUN_A chess --games 1000 --greedy-games 200
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from torch import nn

from saelab.boardgame import chess_games, lm, othello


def scores(model: nn.Module, game: str, n_games: int, greedy_games: int, seed: int
           ) -> dict[str, lm.GameHits]:
    """Per-game hit counts of every legal-move metric of ``game`` (as ``lm.legal_move_accuracy``)."""
    if game == "othello":
        return {"top1_legal": lm.othello_legal_hits(model, othello.random_games(n_games, seed))}
    max_chars = int(lm.model_config(model).n_positions)
    games = chess_games.random_games(n_games, seed, max_chars)
    few = chess_games.random_games(min(greedy_games, n_games), seed, max_chars)
    return {"first_char_legal": lm.chess_first_char_hits(model, games),
            "greedy_move_legal": lm.chess_greedy_hits(model, few)}


def paired_interval(a: lm.GameHits, b: lm.GameHits, resamples: int, seed: int = 0
                    ) -> tuple[float, float]:
    """95% interval of accuracy(a) − accuracy(b), resampling games with replacement."""
    rng = np.random.default_rng(seed)
    n = len(a.scored)
    picks = rng.integers(0, n, (resamples, n))
    diffs = (a.hits[picks].sum(1) - b.hits[picks].sum(1)) / np.maximum(a.scored[picks].sum(1), 1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_a", help="'othello', 'chess' or a model folder")
    parser.add_argument("model_b", help="the model to compare with, of the same game")
    parser.add_argument("--games", type=int, default=2000)
    parser.add_argument("--greedy-games", type=int, default=30,
                        help="chess: games whose moves are greedy-decoded (lm-eval's default)")
    parser.add_argument("--seed", type=int, default=0, help="held-out seed (as lm-eval's)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    model_a, game = lm.load_game_lm(args.model_a)
    model_b, game_b = lm.load_game_lm(args.model_b)
    if game != game_b:
        raise SystemExit(f"{args.model_a} is a {game} model and {args.model_b} a {game_b} "
                         "model; compare two models of the same game")
    seed = lm.held_out_seed(args.seed)
    a = scores(model_a.eval(), game, args.games, args.greedy_games, seed)
    b = scores(model_b.eval(), game, args.games, args.greedy_games, seed)
    result: dict[str, Any] = {"game": game, "games": args.games, "model_a": args.model_a,
                              "model_b": args.model_b}
    if game == "chess":
        result["greedy_games"] = min(args.greedy_games, args.games)
    for name in a:
        result[name] = {"a": a[name].accuracy, "b": b[name].accuracy,
                        "difference": a[name].accuracy - b[name].accuracy,
                        "ci95": list(paired_interval(a[name], b[name], args.resamples))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
