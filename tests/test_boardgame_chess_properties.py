"""The paper's chess properties on hand-made positions: initial-masked pieces, threats,
pseudo-legal destinations, every strategy flag, and the first-20-positions rule."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.boardgame import chess_games
from saelab.boardgame.properties import (
    CHESS_PROPERTIES,
    STRATEGY_FLAGS,
    board_pseudo_legal_destinations,
    board_strategy_flags,
    board_threats,
    chess_labels_for_prefix,
    chess_positions,
    group_members,
)

chess = pytest.importorskip("chess")
FLAG_INDEX = {name: j for j, (name, _, _) in enumerate(STRATEGY_FLAGS)}


def _flags(fen: str) -> set[str]:
    values = board_strategy_flags(chess.Board(fen))
    return {name for name, j in FLAG_INDEX.items() if values[j]}


def _cells(name: str, labels: np.ndarray) -> set[str]:
    names = next(p.cell_names for p in CHESS_PROPERTIES if p.name == name)
    return {names[i] for i in np.flatnonzero(labels)}


def _squares(bits: np.ndarray) -> set[str]:
    return {chess.square_name(int(s)) for s in np.flatnonzero(bits)}


def test_initial_position_is_masked() -> None:
    labels = chess_labels_for_prefix(";1.e4 e5 2.Nf3 ")
    assert _cells("piece_no_initial", labels["piece_no_initial"]) == {"P@e4", "p@e5", "N@f3"}
    back = chess_labels_for_prefix(";1.Nf3 Nf6 2.Ng1 ")  # the knight is home again: masked
    assert _cells("piece_no_initial", back["piece_no_initial"]) == {"n@f6"}
    assert "N@g1" in _cells("piece", back["piece"])
    prop = next(p for p in CHESS_PROPERTIES if p.name == "piece_no_initial")
    assert prop.paper_denominator == 768


def test_threats_and_pseudo_legal_destinations() -> None:
    assert _squares(board_threats(chess.Board("7k/8/8/8/8/8/8/K7 w - - 0 1"))) == {
        "g8", "g7", "h7"}
    pinned = chess.Board("4r1k1/8/8/8/8/8/4R3/4K3 w - - 0 1")  # the e2 rook is pinned
    pseudo = _squares(board_pseudo_legal_destinations(pinned))
    legal = {chess.square_name(m.to_square) for m in pinned.legal_moves}
    assert "a2" in pseudo and "a2" not in legal and legal < pseudo


@pytest.mark.parametrize(("fen", "present", "absent"), [
    # knight c7 hits rook a8 and queen e6
    ("r7/2N5/4q3/8/8/8/8/K6k w - - 0 1", {"knight_fork", "any_fork"}, {"pin"}),
    # the same knight pinned to its king by the c8 rook: no fork, a pin
    ("r1r5/2N5/4q3/8/8/8/8/2K4k w - - 0 1", {"pin"}, {"knight_fork", "any_fork"}),
    # pawn d4 hits knight c5 and bishop e5: a fork, not a knight fork
    ("k7/8/8/2n1b3/3P4/8/8/7K w - - 0 1", {"any_fork"}, {"knight_fork", "pin"}),
    # back rank: ...Re1 would mate
    ("4r1k1/8/8/8/8/8/5PPP/6K1 w - - 0 1", {"mate_threat"}, set()),
    # h2 is free: no mate
    ("4r1k1/8/8/8/8/8/5PP1/6K1 w - - 0 1", set(), {"mate_threat"}),
    ("4k3/8/8/3q4/8/8/3R4/4K3 w - - 0 1", {"can_capture_queen"}, {"has_queen"}),
    ("4k3/8/8/3q4/8/8/4R3/4K3 w - - 0 1", set(), {"can_capture_queen"}),
    ("4k3/8/8/8/8/8/8/R4RK1 w - - 0 1", {"connected_rooks", "ambiguous_moves", "can_check"},
     {"castling_rights"}),
    ("4k3/8/8/8/8/8/8/R3K2R w KQ - 0 1", {"castling_rights", "kingside_castling_rights",
                                          "queenside_castling_rights", "can_check"},
     {"connected_rooks"}),
    # two pawns can take on d5, but SAN names pawn captures by file: not ambiguous
    ("4k3/8/8/3p4/2P1P3/8/8/4K3 w - - 0 1", set(), {"ambiguous_moves", "can_check"}),
    ("4k3/8/8/8/8/8/8/2B1KB2 w - - 0 1", {"bishop_pair"}, {"check"}),
])
def test_strategy_flags_on_hand_made_positions(fen: str, present: set[str],
                                               absent: set[str]) -> None:
    flags = _flags(fen)
    assert present <= flags
    assert not absent & flags


def test_strategy_flags_through_movetext() -> None:
    pin = chess_labels_for_prefix(";1.e4 e5 2.Bb5 ")  # Black's d7 pawn is pinned
    assert pin["pin"][0] and not chess_labels_for_prefix(";1.e4 e5 ")["pin"][0]
    repeat = ";1.Nf3 Nf6 2.Ng1 Ng8 3.Nf3 Nf6 4.Ng1 Ng8 5."
    assert chess_labels_for_prefix(repeat)["can_claim_draw"][0]
    assert not chess_labels_for_prefix(";1.Nf3 Nf6 2.Ng1 Ng8 3.")["can_claim_draw"][0]
    assert group_members("chess")["strategy"] == [name for name, _, _ in STRATEGY_FLAGS]


def test_first_twenty_positions_per_game() -> None:
    games = chess_games.random_games(4, seed=4)
    every = chess_positions(games)
    first = chess_positions(games, max_per_game=20)
    for g in range(4):
        dots = every[every[:, 0] == g, 1]
        assert dots.size > 20  # the test needs long games
        assert first[first[:, 0] == g, 1].tolist() == dots[:20].tolist()
