"""Othello engine and chess game generation: hand-checked positions and a naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.boardgame import chess_games, othello

chess = pytest.importorskip("chess")

# ---------------------------------------------------------------------------- Othello


def _naive_legal(board: np.ndarray, player: int) -> set[int]:
    """Reference move generator on an 8×8 array (1 black, 2 white, 0 empty)."""
    moves = set()
    for r in range(8):
        for c in range(8):
            if board[r, c] == 0 and _naive_flips(board, r, c, player):
                moves.add(r * 8 + c)
    return moves


def _naive_flips(board: np.ndarray, r: int, c: int, player: int) -> list[tuple[int, int]]:
    flips = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            run, rr, cc = [], r + dr, c + dc
            while 0 <= rr < 8 and 0 <= cc < 8 and board[rr, cc] == 3 - player:
                run.append((rr, cc))
                rr, cc = rr + dr, cc + dc
            if run and 0 <= rr < 8 and 0 <= cc < 8 and board[rr, cc] == player:
                flips += run
    return flips


def test_opening_moves_and_tokens() -> None:
    black, white = othello.start_position(1)
    legal = othello.unpack_bits(othello.legal_moves(black, white))[0]
    assert sorted(othello.square_name(int(s)) for s in np.flatnonzero(legal)) == ["c4", "d3", "e6", "f5"]
    assert othello.VOCAB_SIZE == 61
    squares = np.array(othello.PLAYABLE_SQUARES)
    assert (othello.tokens_to_squares(othello.squares_to_tokens(squares)) == squares).all()
    assert othello.squares_to_tokens(np.array([othello.NO_MOVE]))[0] == othello.PAD_TOKEN
    assert othello.parse_square("d3") == 19 and othello.square_name(19) == "d3"


def test_random_games_match_a_naive_reference() -> None:
    games = othello.random_games(40, seed=3)
    for g in range(games.n_games):
        board = np.zeros((8, 8), dtype=np.int64)
        board[3, 3] = board[4, 4] = 2
        board[3, 4] = board[4, 3] = 1
        player = 1
        for t in range(games.lengths[g]):
            if not _naive_legal(board, player):
                player = 3 - player  # implicit pass
            square = int(games.moves[g, t])
            assert square in _naive_legal(board, player)
            for rr, cc in _naive_flips(board, square // 8, square % 8, player):
                board[rr, cc] = player
            board[square // 8, square % 8] = player
            player = 3 - player
            black = othello.unpack_bits(games.black[g, t]).reshape(8, 8)
            assert (black == (board == 1)).all()
            if not _naive_legal(board, player) and _naive_legal(board, 3 - player):
                player = 3 - player
            assert games.next_black[g, t] == (player == 1)
            legal = set(np.flatnonzero(othello.unpack_bits(games.next_legal[g, t])))
            assert legal == _naive_legal(board, player)
        assert (not _naive_legal(board, 1) and not _naive_legal(board, 2)) or games.lengths[g] == 60


def test_generation_is_seeded_and_replay_agrees() -> None:
    a, b = othello.random_games(20, seed=5), othello.random_games(20, seed=5)
    assert (a.moves == b.moves).all()
    again = othello.replay(a.moves)
    assert (again.black == a.black).all() and (again.next_legal == a.next_legal).all()


def test_replay_rejects_illegal_moves() -> None:
    with pytest.raises(othello.OthelloError, match=r"a1.*illegal"):
        othello.replay_names(["a1"])
    with pytest.raises(othello.OthelloError, match="file a-h"):
        othello.parse_square("z9")


# ---------------------------------------------------------------------------- chess


def test_chess_movetext_format_and_states() -> None:
    game = chess_games.play_game(np.random.default_rng(0), max_chars=120)
    assert game.text.startswith(";1.") and len(game.text) <= 120
    assert set(game.text) <= set(chess_games.ALPHABET) and len(chess_games.ALPHABET) == 32
    # the state at each character is the board after the moves completed (space read) by then
    for i in range(len(game.text)):
        board = chess_games.replay_prefix(game.text[:i + 1])
        expected = chess_games.board_state(board)
        assert (game.states[game.char_ply[i]].pieces == expected.pieces).all()


def test_chess_batch_masks() -> None:
    games = chess_games.random_games(3, seed=1, max_chars=80)
    text = games.texts[0]
    dots = [i for i, ch in enumerate(text) if ch == "."]
    assert list(np.flatnonzero(games.dot_mask()[0])) == dots
    starts = np.flatnonzero(games.move_start_mask()[0])
    # every move start is followed by the first character of a SAN move
    assert all(text[i + 1] in "BKNOQRabcdefgh" for i in starts)
    assert (games.white_to_move[0, dots]).all()
    assert chess_games.decode(chess_games.encode(text)) == text


def test_chess_encode_rejects_foreign_characters() -> None:
    with pytest.raises(chess_games.ChessDataError, match="not in the chess alphabet"):
        chess_games.encode(";1.e4 e5 {comment}")
