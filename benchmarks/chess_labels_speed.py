"""Chess labelling speed: the bitboard labeller (saelab.boardgame.chess_labels) against the
reference definitions it replaced (properties.reference_board_labels: python-chess move by
move, one board copy per position), on the same positions, with the labels checked identical.

Positions: the first 20 '.' characters of ``--games`` weak-engine games (the comparison's
positions), or every '.' with ``--per-game 0``. Times are process CPU seconds (the machine
is shared, wall time mostly measures the other processes) and wall seconds. Prints one JSON
line.

    OMP_NUM_THREADS=1 python benchmarks/chess_labels_speed.py --games 100
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from saelab.boardgame import chess_games, chess_labels
from saelab.boardgame.properties import chess_positions, reference_board_labels


def timed(fn, *args):  # type: ignore[no-untyped-def]
    """The result, CPU seconds and wall seconds of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--per-game", type=int, default=20, help="0 = every '.' position")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--repeats", type=int, default=3, help="time each labeller this many "
                        "times, alternating, and keep the fastest")
    args = parser.parse_args(argv)
    games = chess_games.random_games(args.games, args.seed)
    index = chess_positions(games, args.per_game)
    new_cpu = new_wall = old_cpu = old_wall = float("inf")
    for _ in range(args.repeats):  # alternating, so both see the same machine load
        chess_labels.clear_caches()  # each run starts cold, as a fresh process would
        new, cpu, wall = timed(chess_labels.label_positions, games, index)
        new_cpu, new_wall = min(new_cpu, cpu), min(new_wall, wall)
        old, cpu, wall = timed(reference_board_labels, games, index)
        old_cpu, old_wall = min(old_cpu, cpu), min(old_wall, wall)
    identical = bool(np.array_equal(new.threats, old.threats)
                     and np.array_equal(new.pseudo_legal_destinations,
                                        old.pseudo_legal_destinations)
                     and np.array_equal(new.strategy, old.strategy))
    n = len(index)
    print(json.dumps({
        "positions": n, "games": args.games, "per_game": args.per_game,
        "repeats": args.repeats,
        "identical_labels": identical,
        "reference": {"cpu_s": round(old_cpu, 3), "wall_s": round(old_wall, 3),
                      "positions_per_cpu_s": round(n / old_cpu, 1)},
        "fast": {"cpu_s": round(new_cpu, 3), "wall_s": round(new_wall, 3),
                 "positions_per_cpu_s": round(n / new_cpu, 1)},
        "speedup_cpu": round(old_cpu / new_cpu, 2), "speedup_wall": round(old_wall / new_wall, 2),
        "flag_rates": {name: round(float(old.strategy[:, j].mean()), 4)
                       for j, name in enumerate(chess_labels.FLAG_NAMES)}}))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
