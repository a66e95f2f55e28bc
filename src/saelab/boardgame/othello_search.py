"""A small Othello search engine (negamax with alpha-beta) on Python-int bitboards.

It ranks moves for the offline preference task (:mod:`saelab.sarm.othello`). The evaluation
of a position, from the side to move:

    E = (my discs − their discs) + MOBILITY_WEIGHT · (my legal moves − their legal moves)

A finished game (neither side can move) scores ±TERMINAL_SCALE·disc difference, so a won
ending outranks any heuristic value. A side without a legal move passes (the search continues
with the other side at the same depth budget minus one). The value of a move at depth d is
−negamax(position after the move, d − 1): depth 1 looks at the position right after the move,
depth 2 also at the opponent's best reply, and so on.

Squares and bit layout follow :mod:`saelab.boardgame.othello` (bit i = square i, a1 = 0).
"""

from __future__ import annotations

MOBILITY_WEIGHT = 2.0
TERMINAL_SCALE = 100.0

_FULL = (1 << 64) - 1
_NOT_A = 0xFEFEFEFEFEFEFEFE
_NOT_H = 0x7F7F7F7F7F7F7F7F
# (shift, mask applied after the shift); positive = left shift
_DIRS = ((1, _NOT_A), (-1, _NOT_H), (8, _FULL), (-8, _FULL),
         (9, _NOT_A), (7, _NOT_H), (-7, _NOT_A), (-9, _NOT_H))


def _shift(board: int, amount: int, mask: int) -> int:
    return ((board << amount) if amount > 0 else (board >> -amount)) & mask & _FULL


def legal(mine: int, theirs: int) -> int:
    """Bitboard of the legal moves of the side owning ``mine``."""
    empty = ~(mine | theirs) & _FULL
    moves = 0
    for amount, mask in _DIRS:
        run = _shift(mine, amount, mask) & theirs
        for _ in range(5):
            run |= _shift(run, amount, mask) & theirs
        moves |= _shift(run, amount, mask) & empty
    return moves


def play(mine: int, theirs: int, square: int) -> tuple[int, int]:
    """(mine, theirs) after the side owning ``mine`` plays ``square`` (assumed legal)."""
    move = 1 << square
    flips = 0
    for amount, mask in _DIRS:
        run = 0
        cur = _shift(move, amount, mask)
        while cur & theirs:
            run |= cur
            cur = _shift(cur, amount, mask)
        if cur & mine:
            flips |= run
    return mine | move | flips, theirs & ~flips


def squares(board: int) -> list[int]:
    out = []
    while board:
        low = board & -board
        out.append(low.bit_length() - 1)
        board ^= low
    return out


def evaluate(mine: int, theirs: int) -> float:
    """The heuristic E from the side owning ``mine`` (see the module docstring)."""
    discs = mine.bit_count() - theirs.bit_count()
    mobility = legal(mine, theirs).bit_count() - legal(theirs, mine).bit_count()
    return discs + MOBILITY_WEIGHT * mobility


def negamax(mine: int, theirs: int, depth: int, alpha: float = -1e18,
            beta: float = 1e18) -> float:
    """Value of the position for the side to move (owning ``mine``), searching ``depth`` plies."""
    moves = legal(mine, theirs)
    if not moves:
        if not legal(theirs, mine):
            return TERMINAL_SCALE * (mine.bit_count() - theirs.bit_count())
        if depth <= 0:
            return evaluate(mine, theirs)
        return -negamax(theirs, mine, depth - 1, -beta, -alpha)  # pass
    if depth <= 0:
        return evaluate(mine, theirs)
    best = -1e18
    for sq in squares(moves):
        new_mine, new_theirs = play(mine, theirs, sq)
        value = -negamax(new_theirs, new_mine, depth - 1, -beta, -alpha)
        best = max(best, value)
        alpha = max(alpha, value)
        if alpha >= beta:
            break
    return best


def move_value(mine: int, theirs: int, square: int, depth: int) -> float:
    """Value for the mover of playing ``square``, searched to ``depth`` plies (≥ 1)."""
    new_mine, new_theirs = play(mine, theirs, square)
    return -negamax(new_theirs, new_mine, depth - 1)
