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

from saelab.boardgame import lm
from saelab.training.logging import StageProgress


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
    max_chars = int(lm.model_config(model_a).n_positions)  # lm-eval's: the model's context
    stage = StageProgress("game_lm_paired")
    hits = []
    for label, model in (("a", model_a), ("b", model_b)):
        stage.say(f"model {label}: scoring {args.games} held-out {game} games ...")
        hits.append(lm.legal_move_hits(
            model, game, args.games, seed, args.greedy_games, max_chars,
            progress=lambda metric, label=label: stage.counter(f"model {label}, {metric}",
                                                               "games", interval=15)))
    stage.say("done")
    a, b = hits
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
