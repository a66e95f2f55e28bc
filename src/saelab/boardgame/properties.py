"""Board-state properties (BSPs): per-position labels the SAE latents are scored against.

A property is a set of binary *cells* (``mine@d4``, ``legal@c4``, ``N@f3``, ``in_check``); its
labels for a batch of positions are a ``(P, n_cells)`` bool array. One-hot square properties
are flattened class-major: cell ``c * 64 + s`` is class ``c`` on square ``s``.

Othello (relative to the player who moves next, so the labels flip each ply; after an
implicit pass the same player moves again and the labels do not flip):

- ``board``: each square is empty, mine (the next mover's disc) or theirs (192 cells, one-hot),
  the paper's main Othello property.
- ``mine_theirs``: the blank-masked variant: only the mine and theirs cells (128).
- ``legal_moves``: squares the next mover may play (64 cells).

Chess (the position after the moves completed so far; at the scored ``.`` positions White is
to move):

- ``piece``: the piece on each square, 12 classes (an empty square is none; 768 cells).
- ``legal_destinations``: squares some legal move of the side to move lands on (64 cells).
- ``flags``: in check, the four castling rights, each side has a queen, each side has the
  bishop pair, an en-passant capture is legal (10 cells).

Each property also has a ``*_for_prefix`` helper that labels one game prefix (used by the tests
on hand-checked positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saelab.boardgame import chess_games, othello

SQUARE_NAMES = tuple(othello.square_name(s) for s in range(64))


@dataclass(frozen=True)
class BoardProperty:
    """A named group of binary cells and how to compute them from a game batch's positions."""

    name: str
    cell_names: tuple[str, ...]
    labels: Callable[[Any, np.ndarray], np.ndarray]  # (games, (P, 2) [game, pos]) -> (P, cells)

    @property
    def n_cells(self) -> int:
        return len(self.cell_names)


def _square_cells(classes: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{c}@{s}" for c in classes for s in SQUARE_NAMES)


# ---------------------------------------------------------------------------- Othello


def othello_mine_theirs(games: othello.OthelloGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 128)``: next mover's discs (cells 0..63), opponent's discs (64..127)."""
    g, t = index_P2[:, 0], index_P2[:, 1]
    next_black = games.next_black[g, t]
    black, white = games.black[g, t], games.white[g, t]
    mine = np.where(next_black, black, white)
    theirs = np.where(next_black, white, black)
    return np.concatenate([othello.unpack_bits(mine), othello.unpack_bits(theirs)], axis=1)


def othello_board(games: othello.OthelloGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 192)``: one-hot empty (cells 0..63) / mine (64..127) / theirs (128..191)."""
    mine_theirs = othello_mine_theirs(games, index_P2)
    empty = ~(mine_theirs[:, :64] | mine_theirs[:, 64:])
    return np.concatenate([empty, mine_theirs], axis=1)


def othello_legal(games: othello.OthelloGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 64)``: squares the next mover may play."""
    return othello.unpack_bits(games.next_legal[index_P2[:, 0], index_P2[:, 1]])


OTHELLO_PROPERTIES = (
    BoardProperty("board", _square_cells(("empty", "mine", "theirs")), othello_board),
    BoardProperty("mine_theirs", _square_cells(("mine", "theirs")), othello_mine_theirs),
    BoardProperty("legal_moves", _square_cells(("legal",)), othello_legal),
)


def othello_positions(games: othello.OthelloGames, n_positions: int = 59) -> np.ndarray:
    """``(P, 2)`` [game, move index] of every position (after a real move) in the first
    ``n_positions`` moves of each game."""
    valid = games.moves[:, :n_positions] >= 0
    return np.argwhere(valid)


def othello_labels_for_prefix(move_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Labels of every Othello property after the moves in ``move_names`` (e.g. ``["f5"]``)."""
    if not move_names:
        raise ValueError("give at least one move: labels describe the position after a move")
    games = othello.replay_names(move_names)
    index = np.array([[0, len(move_names) - 1]])
    return {p.name: p.labels(games, index)[0] for p in OTHELLO_PROPERTIES}


# ---------------------------------------------------------------------------- chess


def chess_piece(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 768)``: one-hot piece class per square, empty squares left out."""
    pieces = games.pieces[index_P2[:, 0], index_P2[:, 1]].astype(np.int64)  # (P, 64)
    one_hot = pieces[:, None, :] == np.arange(1, 13)[None, :, None]  # (P, 12, 64)
    return one_hot.reshape(len(index_P2), -1)


def chess_legal_destinations(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 64)``: squares a legal move of the side to move ends on."""
    return othello.unpack_bits(games.legal_destinations[index_P2[:, 0], index_P2[:, 1]])


def chess_flags(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 10)``: the whole-board flags of chess_games.FLAG_NAMES."""
    return games.flags[index_P2[:, 0], index_P2[:, 1]]


CHESS_PROPERTIES = (
    BoardProperty("piece", _square_cells(chess_games.PIECE_CLASSES[1:]), chess_piece),
    BoardProperty("legal_destinations", _square_cells(("dest",)), chess_legal_destinations),
    BoardProperty("flags", chess_games.FLAG_NAMES, chess_flags),
)


def chess_positions(games: chess_games.ChessGames) -> np.ndarray:
    """``(P, 2)`` [game, character index] of every ``.`` (just before White moves)."""
    return np.argwhere(games.dot_mask())


def chess_labels_for_prefix(movetext: str) -> dict[str, np.ndarray]:
    """Labels of every chess property after the moves completed in ``movetext``."""
    board = chess_games.replay_prefix(movetext)
    state = chess_games.board_state(board)
    games = chess_games.ChessGames(
        [movetext], np.zeros((1, 1), np.int64), np.ones(1, np.int64), state.pieces[None, None],
        np.array([[state.legal_destinations]], dtype=np.uint64), state.flags[None, None],
        np.array([[state.white_to_move]]))
    index = np.zeros((1, 2), dtype=np.int64)
    return {p.name: p.labels(games, index)[0] for p in CHESS_PROPERTIES}


def properties_for(game: str) -> tuple[BoardProperty, ...]:
    if game == "othello":
        return OTHELLO_PROPERTIES
    if game == "chess":
        return CHESS_PROPERTIES
    raise ValueError(f"unknown game {game!r}; choose othello or chess")
