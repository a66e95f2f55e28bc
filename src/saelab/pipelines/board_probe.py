"""World-model probe of an Othello LM: can a linear map read the board from the residual stream?

One logistic-regression probe (``saelab.evals.boardgame.fit_probe``) is fit on the one-hot
``board`` property (empty / mine / theirs per square, 192 cells) at the hooked layer over seeded
training games; on held-out games each square is classified as the arg-max of its three cells'
logits. ``square_accuracy`` is the share of (position, square) pairs classified correctly: the
"per-square probe accuracy" of Li et al. and Nanda et al. (chance ≈ 0.4 late in a game; the four
centre squares are never empty, so they are included, as in those papers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saelab.evals.boardgame import (
    TEST_GAMES_SEED,
    TRAIN_GAMES_SEED,
    default_layer,
    fit_probe,
    game_split,
)


@dataclass
class BoardProbeResult:
    layer: int
    square_accuracy: float  # 3-way (empty / mine / theirs) per square, held-out games
    mine_theirs_accuracy: float  # the same, over squares that hold a disc (blank masked)
    train_games: int
    test_games: int


def othello_board_probe(model: torch.nn.Module, layer: int = -1, train_games: int = 500,
                        test_games: int = 500, seed: int = 0, steps: int = 400
                        ) -> BoardProbeResult:
    """Fit the board probe on ``train_games`` and score it on ``test_games`` (both seeded,
    disjoint from the LM's training games)."""
    layer = default_layer(model) if layer < 0 else layer
    train = game_split(model, "othello", layer, train_games, TRAIN_GAMES_SEED + seed)
    test = game_split(model, "othello", layer, test_games, TEST_GAMES_SEED + seed)
    probe = fit_probe(train.acts_PD, train.labels["board"], steps, seed)
    with torch.no_grad():
        logits = probe(test.acts_PD)
    square, mine_theirs = square_accuracies(logits, test.labels["board"])
    return BoardProbeResult(layer, square, mine_theirs, train_games, test_games)


def square_accuracies(logits_PC: torch.Tensor, board_PC: torch.Tensor) -> tuple[float, float]:
    """(3-way accuracy over all squares, accuracy over occupied squares) of per-cell logits
    against one-hot ``board`` labels, whose cells are class-major: empty@a1..h8, mine@…,
    theirs@…; each square's prediction is the arg-max of its three cells."""
    predicted = logits_PC.reshape(-1, 3, 64).argmax(1)
    truth = board_PC.reshape(-1, 3, 64).float().argmax(1)  # (P, 64): 0 empty, 1 mine, 2 theirs
    right = predicted == truth
    occupied = truth > 0
    return float(right.float().mean()), float(right[occupied].float().mean())
