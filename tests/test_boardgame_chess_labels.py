"""The fast chess labeller (bitboards, chess_labels) gives exactly the labels of the readable
reference definitions in properties.py (python-chess, move by move), on positions from real
games, on long uniformly random games (promotions, en passant, mates, checks) and on knight
shuffles (threefold repetition claims); and its disk cache returns what it stored."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

chess = pytest.importorskip("chess")

from saelab.boardgame import chess_games, chess_labels  # noqa: E402
from saelab.boardgame.properties import (  # noqa: E402
    STRATEGY_FLAGS,
    board_strategy_flags,
    board_threats,
    chess_positions,
    reference_board_labels,
)


def _assert_same(games: Any, index: np.ndarray) -> chess_labels.ChessBoardLabels:
    fast = chess_labels.label_positions(games, index)
    ref = reference_board_labels(games, index)
    np.testing.assert_array_equal(fast.threats, ref.threats)
    np.testing.assert_array_equal(fast.pseudo_legal_destinations, ref.pseudo_legal_destinations)
    for j, name in enumerate(chess_labels.FLAG_NAMES):
        wrong = np.flatnonzero(fast.strategy[:, j] != ref.strategy[:, j])
        assert wrong.size == 0, f"{name} differs at {wrong.size} positions, e.g. row {wrong[:3]}"
    return ref


def test_flag_order_matches_the_reference() -> None:
    assert tuple(name for name, _, _ in STRATEGY_FLAGS) == chess_labels.FLAG_NAMES


def test_same_labels_as_the_reference_on_weak_engine_games() -> None:
    """The games the comparison scores (the weak engine), the first 20 '.' positions each."""
    games = chess_games.random_games(16, seed=11)
    index = chess_positions(games, 20)
    assert len(index) >= 300
    ref = _assert_same(games, index)
    for name in ("check", "pin", "can_check", "can_capture_queen", "ambiguous_moves"):
        assert ref.strategy[:, chess_labels.FLAG_NAMES.index(name)].any(), name


def test_same_labels_on_long_random_games() -> None:
    """Uniformly random play for up to 1,500 characters: promotions, en passant, mates,
    mate threats with the side to move in check, pawn forks. Every character is labelled
    (Black to move too)."""
    rng = np.random.default_rng(3)
    texts = [chess_games.play_game(np.random.default_rng([7, i]), 1500, greedy_prob=0.0).text
             for i in range(3)]
    games = SimpleNamespace(texts=texts)
    index = np.array([[g, c] for g, text in enumerate(texts) for c in range(len(text))
                      if text[c] == " " and rng.random() < 0.45])
    ref = _assert_same(games, index)
    for name in ("mate_threat", "any_fork", "check", "can_check", "connected_rooks"):
        assert ref.strategy[:, chess_labels.FLAG_NAMES.index(name)].any(), name


def test_same_draw_claims_on_repetitions() -> None:
    """Knight shuffles: threefold claims, both a position seen thrice and a move reaching a
    position for the third time, and the positions before them (no claim)."""
    texts = [";1.Nf3 Nf6 2.Ng1 Ng8 3.Nf3 Nf6 4.Ng1 Ng8 5.Nc3 Nc6 6.Nb1 Nb8 7.e4 ",
             ";1.e4 e5 2.Ke2 Ke7 3.Ke1 Ke8 4.Ke2 Ke7 5.Ke1 Ke8 6.Nf3 "]
    games = SimpleNamespace(texts=texts)
    index = np.array([[g, c] for g, text in enumerate(texts) for c in range(len(text))
                      if text[c] == " "])
    ref = _assert_same(games, index)
    claims = ref.strategy[:, chess_labels.FLAG_NAMES.index("can_claim_draw")]
    assert claims.any() and not claims.all()


def test_cache_returns_the_stored_labels(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    games = chess_games.random_games(2, seed=5)
    index = chess_positions(games, 5)
    first = chess_labels.cached_label_positions(games, index, tmp_path)
    assert len(list(tmp_path.glob("chess_labels_*.npz"))) == 1

    def fail(*_: Any, **__: Any) -> None:
        raise AssertionError("labelled again instead of reading the cache")
    monkeypatch.setattr(chess_labels, "label_positions", fail)
    again = chess_labels.cached_label_positions(games, index, tmp_path)
    np.testing.assert_array_equal(again.strategy, first.strategy)
    np.testing.assert_array_equal(again.threats, first.threats)
    # other positions or another label version are another key
    assert chess_labels.cache_key(games, index[:3]) != chess_labels.cache_key(games, index)
    monkeypatch.setattr(chess_labels, "LABEL_VERSION", chess_labels.LABEL_VERSION + 1)
    with pytest.raises(AssertionError, match="labelled again"):
        chess_labels.cached_label_positions(games, index, tmp_path)


@pytest.mark.parametrize("fen", [
    # mate threats with the side to move in check: the mating move is the checker's own
    # move / lands between a checker and the king (found by random play)
    "3b3r/p7/5n1B/Q3p1PP/k1bp3P/2P2KR1/6n1/6N1 b - - 0 56",
    "8/bq5N/5R2/p7/P7/1p5p/7P/3k3K w - - 8 125",
    "4k3/1P6/8/8/8/8/8/4K3 w - - 0 1",  # the only check is a promotion
    "8/8/8/2k5/3pP3/8/5K2/8 b - e3 0 1",  # the only check is en passant
    "4k3/8/8/8/8/8/4N3/4R1K1 w - - 0 1",  # the only checks are discovered
    "4r1k1/8/8/8/8/8/5PPP/6K1 w - - 0 1",  # back-rank mate threat
    "r1r5/2N5/4q3/8/8/8/8/2K4k w - - 0 1",  # pinned knight: no fork
    "k7/8/8/2n1b3/3P4/8/8/7K w - - 0 1",  # pawn fork
])
def test_same_flags_on_hand_picked_positions(fen: str) -> None:
    board = chess.Board(fen)
    fast = chess_labels.strategy_flags(board)
    assert board.fen() == fen  # the in-place flip for the mate threat is undone
    ref = board_strategy_flags(board)
    assert fast == ref.tolist(), [n for n, a, b in zip(chess_labels.FLAG_NAMES, fast, ref,
                                                       strict=True) if a != b]
    assert chess_labels.threats_mask(board) == int(np.packbits(
        board_threats(board), bitorder="little").view("<u8")[0])
