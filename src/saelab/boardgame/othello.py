"""A vectorised Othello engine on 64-bit bitboards, and a random legal-game generator.

Squares are numbered ``row * 8 + col`` with row 0 = rank "1" and col 0 = file "a", so bit ``i``
of a board's ``uint64`` is square ``i`` (``a1`` = 0, ``h1`` = 7, ``a8`` = 56). Black moves first
from the standard opening (white on d4, e5; black on d5, e4).

Every operation works on whole arrays of boards at once, so generating thousands of games costs a
few hundred numpy calls per ply rather than Python loops per game.

Passes follow Li et al.'s synthetic data set: a player with no legal move passes *implicitly* —
no token is emitted, and the next token is the opponent's move. A game ends when neither player
can move (or after 60 moves, when the board is full). Shorter games are padded.

Tokens: the 60 playable squares (the 4 centre squares are never moves) are tokens 1..60 in
square order; token 0 is the pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_SQUARES = 64
MAX_MOVES = 60
CENTRE_SQUARES = (27, 28, 35, 36)  # d4, e4, d5, e5
PLAYABLE_SQUARES = tuple(s for s in range(N_SQUARES) if s not in CENTRE_SQUARES)
PAD_TOKEN = 0
VOCAB_SIZE = len(PLAYABLE_SQUARES) + 1  # 61
NO_MOVE = -1  # square value recorded after a game has ended

_U64 = np.uint64
_ALL = _U64(0xFFFFFFFFFFFFFFFF)
_NOT_FILE_A = _U64(0xFEFEFEFEFEFEFEFE)
_NOT_FILE_H = _U64(0x7F7F7F7F7F7F7F7F)
# (shift amount, shift left?, mask that removes bits wrapped around a board edge)
_DIRECTIONS = (
    (1, True, _NOT_FILE_A),  # east
    (1, False, _NOT_FILE_H),  # west
    (8, True, _ALL),  # north (towards rank 8)
    (8, False, _ALL),  # south
    (9, True, _NOT_FILE_A),  # north-east
    (7, True, _NOT_FILE_H),  # north-west
    (7, False, _NOT_FILE_A),  # south-east
    (9, False, _NOT_FILE_H),  # south-west
)

_TOKEN_OF_SQUARE = np.zeros(N_SQUARES, dtype=np.int64)
_TOKEN_OF_SQUARE[list(PLAYABLE_SQUARES)] = np.arange(1, VOCAB_SIZE)
_SQUARE_OF_TOKEN = np.array([NO_MOVE, *PLAYABLE_SQUARES], dtype=np.int64)


class OthelloError(ValueError):
    """An illegal move or a malformed move sequence; the message names the move."""


def square_name(square: int) -> str:
    """``0 -> "a1"``, ``63 -> "h8"``."""
    return "abcdefgh"[square % 8] + str(square // 8 + 1)


def parse_square(name: str) -> int:
    """``"a1" -> 0``, ``"d3" -> 19``."""
    if len(name) != 2 or name[0] not in "abcdefgh" or name[1] not in "12345678":
        raise OthelloError(f"bad square {name!r}: write a file a-h then a rank 1-8, e.g. 'd3'")
    return (int(name[1]) - 1) * 8 + "abcdefgh".index(name[0])


def squares_to_tokens(squares: np.ndarray) -> np.ndarray:
    """Map squares (``NO_MOVE`` for none) to tokens (``PAD_TOKEN`` for none)."""
    squares = np.asarray(squares)
    return np.where(squares < 0, PAD_TOKEN, _TOKEN_OF_SQUARE[np.clip(squares, 0, 63)])


def tokens_to_squares(tokens: np.ndarray) -> np.ndarray:
    """Inverse of :func:`squares_to_tokens`."""
    return _SQUARE_OF_TOKEN[np.asarray(tokens)]


def _shift(boards: np.ndarray, amount: int, left: bool, mask: np.uint64) -> np.ndarray:
    shifted = boards << _U64(amount) if left else boards >> _U64(amount)
    return shifted & mask


def legal_moves(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Bitboards of the squares where the player owning ``mine`` may play."""
    empty = ~(mine | theirs)
    moves = np.zeros_like(mine)
    for amount, left, mask in _DIRECTIONS:
        run = _shift(mine, amount, left, mask) & theirs
        for _ in range(5):  # a run of opponent discs is at most 6 long
            run |= _shift(run, amount, left, mask) & theirs
        moves |= _shift(run, amount, left, mask) & empty
    return moves


def flipped_discs(move: np.ndarray, mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Bitboards of the opponent discs that playing single-bit ``move`` turns over."""
    flips = np.zeros_like(mine)
    for amount, left, mask in _DIRECTIONS:
        run = _shift(move, amount, left, mask) & theirs
        for _ in range(5):
            run |= _shift(run, amount, left, mask) & theirs
        closed = (_shift(run, amount, left, mask) & mine) != 0  # the run ends on our disc
        flips |= np.where(closed, run, _U64(0))
    return flips


def unpack_bits(boards: np.ndarray) -> np.ndarray:
    """``(...,)`` uint64 bitboards -> ``(..., 64)`` bool, square ``i`` at index ``i``."""
    flat = np.ascontiguousarray(boards, dtype="<u8").reshape(-1)
    bits = np.unpackbits(flat.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return bits.astype(bool).reshape(*np.shape(boards), N_SQUARES)


def start_position(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Black and white bitboards of ``n`` opening positions."""
    black = np.full(n, (1 << 35) | (1 << 28), dtype=np.uint64)
    white = np.full(n, (1 << 27) | (1 << 36), dtype=np.uint64)
    return black, white


@dataclass
class OthelloGames:
    """A batch of games and the position after each move.

    ``moves[g, t]`` is the square of move t (``NO_MOVE`` after the game ended). ``black`` and
    ``white`` hold the bitboards after move t; ``next_black[g, t]`` says whether black makes
    the next move (after an implicit pass the same player moves again; after the last move it
    is simply the other colour), and ``next_legal`` the next mover's legal squares.
    """

    moves: np.ndarray  # (G, 60) int64
    black: np.ndarray  # (G, 60) uint64
    white: np.ndarray  # (G, 60) uint64
    next_black: np.ndarray  # (G, 60) bool
    next_legal: np.ndarray  # (G, 60) uint64

    @property
    def n_games(self) -> int:
        return int(self.moves.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return (self.moves >= 0).sum(axis=1)

    def tokens(self) -> np.ndarray:
        """``(G, 60)`` token ids, pad after the end of each game."""
        return squares_to_tokens(self.moves)

    def subset(self, index: np.ndarray | slice) -> OthelloGames:
        return OthelloGames(self.moves[index], self.black[index], self.white[index],
                            self.next_black[index], self.next_legal[index])


def _random_bit(boards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random set bit of each non-zero board, as a square index (-1 if none)."""
    bits = unpack_bits(boards)
    scores = np.where(bits, rng.random(bits.shape), -1.0)
    square = scores.argmax(axis=1)
    return np.where(bits.any(axis=1), square, NO_MOVE)


def _play(mine: np.ndarray, theirs: np.ndarray, squares: np.ndarray,
          playing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Play ``squares`` for the rows where ``playing`` is set; return the new (mine, theirs)."""
    move = np.where(playing, _U64(1) << np.clip(squares, 0, 63).astype(np.uint64), _U64(0))
    flips = flipped_discs(move, mine, theirs)
    return mine | move | flips, theirs & ~flips


def _run(n: int, choose: np.ndarray | None, rng: np.random.Generator | None) -> OthelloGames:
    """Shared loop: random moves when ``choose`` is None, else the given (n, 60) squares."""
    black, white = start_position(n)
    black_to_move = np.ones(n, dtype=bool)
    out = OthelloGames(np.full((n, MAX_MOVES), NO_MOVE, dtype=np.int64),
                       np.zeros((n, MAX_MOVES), np.uint64), np.zeros((n, MAX_MOVES), np.uint64),
                       np.zeros((n, MAX_MOVES), bool), np.zeros((n, MAX_MOVES), np.uint64))
    for ply in range(MAX_MOVES):
        mine = np.where(black_to_move, black, white)
        theirs = np.where(black_to_move, white, black)
        legal = legal_moves(mine, theirs)
        must_pass = legal == 0
        # implicit pass: the opponent moves instead, without a token
        mine, theirs = np.where(must_pass, theirs, mine), np.where(must_pass, mine, theirs)
        black_to_move = black_to_move ^ must_pass
        legal = np.where(must_pass, legal_moves(mine, theirs), legal)
        playing = legal != 0
        if choose is None:
            assert rng is not None
            squares = _random_bit(legal, rng)
        else:
            squares = choose[:, ply]
            _check_given_moves(squares, legal, playing, ply)
            playing &= squares >= 0
        mine, theirs = _play(mine, theirs, squares, playing)
        black = np.where(black_to_move, mine, theirs)
        white = np.where(black_to_move, theirs, mine)
        out.moves[:, ply] = np.where(playing, squares, NO_MOVE)
        out.black[:, ply], out.white[:, ply] = black, white
        black_to_move = np.where(playing, ~black_to_move, black_to_move)
        _record_next_mover(out, ply, black, white, black_to_move)
    return out


def _check_given_moves(squares: np.ndarray, legal: np.ndarray, playing: np.ndarray,
                       ply: int) -> None:
    given = squares >= 0
    over = given & ~playing
    if over.any():
        g = int(np.flatnonzero(over)[0])
        raise OthelloError(f"game {g}: move {ply + 1} ({square_name(int(squares[g]))}) comes "
                           "after the game has ended (neither player can move)")
    bit = _U64(1) << np.clip(squares, 0, 63).astype(np.uint64)
    illegal = given & ((legal & bit) == 0)
    if illegal.any():
        g = int(np.flatnonzero(illegal)[0])
        raise OthelloError(f"game {g}: move {ply + 1} ({square_name(int(squares[g]))}) is "
                           "illegal in that position")


def _record_next_mover(out: OthelloGames, ply: int, black: np.ndarray, white: np.ndarray,
                       black_to_move: np.ndarray) -> None:
    """Fill next_black / next_legal for ply, resolving a pass by the player to move."""
    mine = np.where(black_to_move, black, white)
    theirs = np.where(black_to_move, white, black)
    legal = legal_moves(mine, theirs)
    passes = legal == 0
    other_legal = legal_moves(theirs, mine)
    can_other = passes & (other_legal != 0)
    out.next_black[:, ply] = black_to_move ^ can_other
    out.next_legal[:, ply] = np.where(passes, other_legal, legal)


def random_games(n: int, seed: int = 0) -> OthelloGames:
    """``n`` games of uniformly random legal moves (seeded; same seed, same games)."""
    return _run(n, None, np.random.default_rng(seed))


def replay(moves: Sequence[Sequence[int]] | np.ndarray) -> OthelloGames:
    """Replay move sequences (squares, one row per game, ``NO_MOVE``-padded or ragged).

    Raises :class:`OthelloError` on an illegal move. Positions after the last given move keep
    ``NO_MOVE`` and repeat nothing: only the first ``len(row)`` plies are meaningful.
    """
    rows = [list(r) for r in moves]
    squares = np.full((len(rows), MAX_MOVES), NO_MOVE, dtype=np.int64)
    for g, row in enumerate(rows):
        if len(row) > MAX_MOVES:
            raise OthelloError(f"game {g} has {len(row)} moves; an Othello game has at most 60")
        squares[g, :len(row)] = row
    return _run(len(rows), squares, None)


def replay_names(names: Sequence[str]) -> OthelloGames:
    """Replay one game given as square names, e.g. ``["d3", "c5"]``."""
    return replay([[parse_square(n) for n in names]])
