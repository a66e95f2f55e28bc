"""An offline preference task with ground truth: pairs of Othello moves from the same position.

From a random game's position (after move t, with at least two legal moves for the player to
move), two distinct legal moves are drawn; each is valued by the search of
:mod:`saelab.boardgame.othello_search` (depth 2 by default: the move and the opponent's best
reply, then disc difference + 2·mobility). The higher-valued move is "chosen", the other
"rejected"; pairs whose values differ by less than ``min_gap`` are dropped (near-ties carry no
preference). Each side of a pair is the game prefix followed by the candidate move, so the
reward reads the game LM's activation at the candidate move's token.

:func:`engine_agreement` scores the labels against a deeper search (how often depth 4 prefers
the same move): the ceiling a learnt reward can hope to reach against "truly better" moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from saelab.architectures.base import SAE
from saelab.boardgame import othello
from saelab.boardgame import othello_search as search
from saelab.sarm.train import PairTokens

PAIR_GAMES_SEED = 5_000_000  # disjoint from LM training, SAE training and evaluation games


@dataclass
class OthelloPairs:
    """Move pairs and their engine values; ``tokens`` feed the SARM."""

    tokens: PairTokens
    game: np.ndarray  # (N,) index into the generated games
    ply: np.ndarray  # (N,) position after move ``ply``
    chosen: np.ndarray  # (N,) squares
    rejected: np.ndarray
    value_chosen: np.ndarray  # engine values at ``depth``
    value_rejected: np.ndarray
    mine: np.ndarray  # (N,) uint64 bitboards of the player to move, before the move
    theirs: np.ndarray
    depth: int

    def __len__(self) -> int:
        return len(self.game)


def _side_tokens(prefixes: list[np.ndarray], moves: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prefixes) + 1
    ids = torch.full((len(prefixes), width), othello.PAD_TOKEN, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for i, (prefix, square) in enumerate(zip(prefixes, moves, strict=True)):
        row = np.append(prefix, othello.squares_to_tokens(np.array([square]))[0])
        ids[i, :len(row)] = torch.from_numpy(row)
        mask[i, :len(row)] = 1
    return ids, mask


def preference_pairs(n_pairs: int, seed: int, depth: int = 2, min_gap: float = 1.0,
                     max_ply: int = 57) -> OthelloPairs:
    """``n_pairs`` labelled move pairs from seeded random games (one pair per position)."""
    rng = np.random.default_rng(seed)
    games = othello.random_games(max(64, n_pairs), PAIR_GAMES_SEED + seed)
    tokens = games.tokens()
    rows: list[tuple[int, int, int, int, float, float, int, int]] = []
    candidates = np.argwhere(games.moves[:, :max_ply + 1] >= 0)
    for g, t in candidates[rng.permutation(len(candidates))]:
        if len(rows) == n_pairs:
            break
        nb = bool(games.next_black[g, t])
        black, white = int(games.black[g, t]), int(games.white[g, t])
        mine, theirs = (black, white) if nb else (white, black)
        moves = search.squares(search.legal(mine, theirs))
        if len(moves) < 2:
            continue
        a, b = rng.choice(moves, size=2, replace=False)
        va = search.move_value(mine, theirs, int(a), depth)
        vb = search.move_value(mine, theirs, int(b), depth)
        if abs(va - vb) < min_gap:
            continue
        if vb > va:
            a, b, va, vb = b, a, vb, va
        rows.append((int(g), int(t), int(a), int(b), va, vb, mine, theirs))
    if len(rows) < n_pairs:
        raise ValueError(f"only {len(rows)} of {n_pairs} pairs found; lower min_gap")
    g_, t_, c_, r_, vc, vr, m_, th = (list(col) for col in zip(*rows, strict=True))
    prefixes = [tokens[g, :t + 1] for g, t in zip(g_, t_, strict=True)]
    c_ids, c_mask = _side_tokens(prefixes, c_)
    r_ids, r_mask = _side_tokens(prefixes, r_)
    return OthelloPairs(PairTokens(c_ids, c_mask, r_ids, r_mask), np.array(g_), np.array(t_),
                        np.array(c_), np.array(r_), np.array(vc), np.array(vr),
                        np.array(m_, dtype=np.uint64), np.array(th, dtype=np.uint64), depth)


def engine_agreement(pairs: OthelloPairs, depth: int, limit: int | None = None) -> float:
    """Share of (the first ``limit``) pairs where a ``depth`` search also prefers the chosen
    move (a tie counts one half)."""
    n = len(pairs) if limit is None else min(limit, len(pairs))
    score = 0.0
    for i in range(n):
        mine, theirs = int(pairs.mine[i]), int(pairs.theirs[i])
        vc = search.move_value(mine, theirs, int(pairs.chosen[i]), depth)
        vr = search.move_value(mine, theirs, int(pairs.rejected[i]), depth)
        score += 1.0 if vc > vr else 0.5 if vc == vr else 0.0
    return score / max(n, 1)


@torch.no_grad()
def board_latent_labels(sae: SAE, model: nn.Module, layer: int, n_games: int = 300,
                        seed: int = 0) -> dict[int, tuple[str, float]]:
    """Each latent's best-matching board cell on seeded games: (``"theirs@d3"``, F1), over the
    ``board`` (empty/mine/theirs per square) and ``legal_moves`` properties, firing = code > 0.
    "mine" is the player who moves next at that position."""
    from saelab.boardgame.properties import OTHELLO_PROPERTIES
    from saelab.evals.boardgame import Counts, encode_sparse, game_split

    split = game_split(model, "othello", layer, n_games, seed)
    codes = encode_sparse(sae, split.acts_PD)
    firing = codes.firing(codes.max_per_latent(), 0.0)
    names: list[str] = []
    f1s = []
    for prop in ("board", "legal_moves"):
        cells = next(p for p in OTHELLO_PROPERTIES if p.name == prop).cell_names
        names.extend(cells)
        f1s.append(Counts.of(firing, split.labels[prop]).f1())
    f1 = torch.cat(f1s, dim=1)
    best, cell = f1.max(1)
    return {j: (names[int(cell[j])], float(best[j])) for j in range(sae.cfg.d_sae)}
