"""Board-state properties on hand-checked Othello and chess positions."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.boardgame import othello
from saelab.boardgame.properties import (
    CHESS_PROPERTIES,
    OTHELLO_PROPERTIES,
    chess_labels_for_prefix,
    othello_labels_for_prefix,
    othello_positions,
)

pytest.importorskip("chess")


def _cells(prop_name: str, props: tuple, labels: np.ndarray) -> set[str]:
    names = next(p.cell_names for p in props if p.name == prop_name)
    return {names[i] for i in np.flatnonzero(labels)}


def test_othello_after_f5_is_from_whites_view() -> None:
    labels = othello_labels_for_prefix(["f5"])  # black flips e5; white moves next
    board = _cells("mine_theirs", OTHELLO_PROPERTIES, labels["mine_theirs"])
    assert board == {"mine@d4", "theirs@d5", "theirs@e4", "theirs@e5", "theirs@f5"}
    assert _cells("legal_moves", OTHELLO_PROPERTIES, labels["legal_moves"]) == {
        "legal@d6", "legal@f4", "legal@f6"}
    full = _cells("board", OTHELLO_PROPERTIES, labels["board"])
    assert len(full) == 64 and {"mine@d4", "theirs@f5", "empty@a1"} <= full


def test_othello_labels_flip_each_ply() -> None:
    after_two = othello_labels_for_prefix(["f5", "f6"])  # white takes e5 back; black to move
    board = _cells("mine_theirs", OTHELLO_PROPERTIES, after_two["mine_theirs"])
    assert board == {"mine@d5", "mine@e4", "mine@f5", "theirs@d4", "theirs@e5", "theirs@f6"}


def test_othello_pass_keeps_the_same_mover() -> None:
    games = othello.random_games(400, seed=11)
    index = othello_positions(games)
    g, t = index[:, 0], index[:, 1]
    black_played = np.where(t > 0, games.next_black[g, np.maximum(t - 1, 0)], True)
    same_mover = games.next_black[g, t] == black_played
    game_on = games.moves[g, np.minimum(t + 1, 59)] >= 0
    # a pass (same mover twice) happens in some games, and only when the other side has no move
    passes = same_mover & game_on & (t < 59)
    assert passes.any()
    for gi, ti in zip(g[passes][:20], t[passes][:20], strict=True):
        mover_is_black = games.next_black[gi, ti]
        opponent = games.white[gi, ti] if mover_is_black else games.black[gi, ti]
        mine = games.black[gi, ti] if mover_is_black else games.white[gi, ti]
        assert othello.legal_moves(np.array([opponent]), np.array([mine]))[0] == 0


def test_chess_after_nf3_pieces_castling_and_destinations() -> None:
    labels = chess_labels_for_prefix(";1.e4 e5 2.Nf3 ")  # the space completes Nf3: Black to move
    pieces = _cells("piece", CHESS_PROPERTIES, labels["piece"])
    assert {"N@f3", "P@e4", "p@e5", "K@e1", "k@e8"} <= pieces
    assert not {"N@g1", "P@e2", "p@e7"} & pieces
    assert len(pieces) == 32
    flags = {name for name, value in labels.items() if value.shape == (1,) and value[0]}
    assert flags == {"castling_rights", "kingside_castling_rights", "queenside_castling_rights",
                     "has_queen", "bishop_pair"}  # Black to move (...Bb4 is blocked by d2)
    dest = _cells("legal_destinations", CHESS_PROPERTIES, labels["legal_destinations"])
    assert {"dest@c6", "dest@f6", "dest@a6", "dest@e7"} <= dest
    assert "dest@e5" not in dest and "dest@e4" not in dest


def test_chess_incomplete_move_is_not_applied() -> None:
    partial = chess_labels_for_prefix(";1.e4 e5 2.Nf3")  # no space yet: Nf3 not completed
    assert "N@g1" in _cells("piece", CHESS_PROPERTIES, partial["piece"])


def test_chess_check_and_lost_castling_rights() -> None:
    check = chess_labels_for_prefix(";1.e4 f5 2.Qh5+ ")
    assert check["check"][0]
    assert _cells("legal_destinations", CHESS_PROPERTIES, check["legal_destinations"]) == {
        "dest@g6"}
    king_walk = chess_labels_for_prefix(";1.e4 e5 2.Ke2 ")  # Black to move keeps its rights
    assert king_walk["castling_rights"][0] and not king_walk["check"][0]
    both_walk = chess_labels_for_prefix(";1.e4 e5 2.Ke2 Ke7 3.")  # White to move lost them
    assert not both_walk["castling_rights"][0]
    assert not both_walk["kingside_castling_rights"][0]


def test_chess_en_passant_flag() -> None:
    labels = chess_labels_for_prefix(";1.e4 a6 2.e5 d5 ")
    assert labels["en_passant"][0]
