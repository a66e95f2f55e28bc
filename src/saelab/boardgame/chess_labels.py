"""Fast chess labels: the board-based chess properties (threats, pseudo-legal destinations and
the 16 strategy flags) computed from python-chess bitboards, each game replayed once.

The readable definitions live in :mod:`saelab.boardgame.properties` (``STRATEGY_FLAGS``,
``board_threats``, ``board_pseudo_legal_destinations``); they play and undo moves, copy
boards and test squares one by one, a few ms per position. This module computes the same
labels from attack bitboards and only plays a move where no bitboard shortcut is exact, about
20x faster; ``tests/test_boardgame_chess_labels.py`` checks both give identical labels on
positions from real games. Where a shortcut needs a condition (no check on the board, no
repeated position in the game so far), the position falls back to the reference definition.

The shortcuts, each exact:

- *a move that gives check*: a checking move either lands its piece on a square from which its
  (promoted) type attacks the enemy king, or moves the only piece between one of its sliders
  and the king, or is a promotion, en passant or castling. Only those candidate moves are
  generated (python-chess's legal generator with from/to masks) and tested with ``gives_check``.
  That the moving piece's old square cannot unblock its own line needs the enemy king not to
  be in check already, true for the side to move in a legal position; the mate threat's
  flipped board satisfies it only when the side to move is not in check (else: reference).
- *threefold repetition*: a claim needs some position of the game to have occurred twice
  already; until one has (counted over every ply, a superset of python-chess's window), the
  answer is no, else python-chess decides.
- *pins, forks, threats, pseudo-legal destinations*: unions of attack masks.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import chess  # an optional dependency (extra "games"): saelab.boardgame.properties imports
import numpy as np  # this module only when it labels chess

from saelab.io import atomic_write_bytes

if TYPE_CHECKING:
    from saelab.boardgame.chess_games import ChessGames

#: bump when any label's definition or computation changes: it keys the on-disk label cache
LABEL_VERSION = 1

#: the order of the strategy flags (``properties.STRATEGY_FLAGS`` must list the same names)
FLAG_NAMES = ("check", "pin", "knight_fork", "any_fork", "castling_rights",
              "kingside_castling_rights", "queenside_castling_rights", "en_passant",
              "can_claim_draw", "can_check", "bishop_pair", "mate_threat", "can_capture_queen",
              "has_queen", "connected_rooks", "ambiguous_moves")

Report = Callable[[int, int], None]  # (done, total) progress callback


@dataclass
class ChessBoardLabels:
    """The board-based labels at P positions."""

    threats: np.ndarray  # (P, 64) bool
    pseudo_legal_destinations: np.ndarray  # (P, 64) bool
    strategy: np.ndarray  # (P, len(FLAG_NAMES)) bool


# ---------------------------------------------------------------------------- square masks


_NOT_A, _NOT_H = ~chess.BB_FILE_A & chess.BB_ALL, ~chess.BB_FILE_H & chess.BB_ALL
_BACKRANK = {chess.WHITE: chess.BB_RANK_8, chess.BLACK: chess.BB_RANK_1}


@functools.lru_cache(maxsize=1 << 16)
def _scan(mask: int) -> tuple[int, ...]:
    """The squares of ``mask``, memoised (piece sets repeat from position to position, and a
    tuple iterates faster than python-chess's generator)."""
    return tuple(chess.scan_reversed(mask))


def clear_caches() -> None:
    """Forget the memoised square lists (a benchmark's cold start)."""
    _scan.cache_clear()


def _pawn_attacks(pawns: int, color: bool) -> int:
    """Squares the pawns of ``color`` on ``pawns`` attack (shifts, not a loop)."""
    if color == chess.WHITE:
        return ((pawns & _NOT_A) << 7 | (pawns & _NOT_H) << 9) & chess.BB_ALL
    return (pawns & _NOT_A) >> 9 | (pawns & _NOT_H) >> 7


_NOT_AB = ~(chess.BB_FILE_A | chess.BB_FILE_B) & chess.BB_ALL
_NOT_GH = ~(chess.BB_FILE_G | chess.BB_FILE_H) & chess.BB_ALL


def _knight_attacks(knights: int) -> int:
    """Squares the knights on ``knights`` attack (shifts, not a loop)."""
    one = (knights >> 1) & _NOT_H | (knights << 1) & _NOT_A  # one file aside
    two = (knights >> 2) & _NOT_GH | (knights << 2) & _NOT_AB  # two files aside
    return ((one << 16) | (one >> 16) | (two << 8) | (two >> 8)) & chess.BB_ALL


def _piece_attacks(board: chess.Board, color: bool, occupied: int) -> int:
    """Union of the attack masks of ``color``'s pieces other than pawns."""
    ours = board.occupied_co[color]
    mask = _knight_attacks(board.knights & ours)
    for square in _scan(board.kings & ours):
        mask |= chess.BB_KING_ATTACKS[square]
    for square in _scan((board.bishops | board.queens) & ours):
        mask |= chess.BB_DIAG_ATTACKS[square][chess.BB_DIAG_MASKS[square] & occupied]
    for square in _scan((board.rooks | board.queens) & ours):
        mask |= (chess.BB_RANK_ATTACKS[square][chess.BB_RANK_MASKS[square] & occupied]
                 | chess.BB_FILE_ATTACKS[square][chess.BB_FILE_MASKS[square] & occupied])
    return mask


def threats_mask(board: chess.Board) -> int:
    """Bitboard of the squares the opponent of the side to move attacks: the union of its
    pieces' attack masks (attacks are symmetric: p attacks s iff s's attackers hold p)."""
    them = not board.turn
    return (_piece_attacks(board, them, board.occupied)
            | _pawn_attacks(board.pawns & board.occupied_co[them], them))


#: (rook square, squares between it and the king's initial square) of every castling
_CASTLING_PATHS = ((chess.BB_H1, chess.BB_F1 | chess.BB_G1),
                   (chess.BB_A1, chess.BB_B1 | chess.BB_C1 | chess.BB_D1),
                   (chess.BB_H8, chess.BB_F8 | chess.BB_G8),
                   (chess.BB_A8, chess.BB_B8 | chess.BB_C8 | chess.BB_D8))


def _may_castle(board: chess.Board) -> bool:
    """False when no castling of the side to move can be pseudo-legal: no right left, or a
    piece between king and rook (python-chess's generator is slower to say so)."""
    rights = board.castling_rights & board.occupied_co[board.turn]
    return any(rights & rook and not board.occupied & path for rook, path in _CASTLING_PATHS)


def pseudo_legal_destinations_mask(board: chess.Board) -> int:
    """Bitboard of the squares some pseudo-legal move of the side to move ends on (what
    python-chess's ``generate_pseudo_legal_moves`` yields, as masks)."""
    us = board.turn
    ours, occupied = board.occupied_co[us], board.occupied
    mask = _piece_attacks(board, us, occupied) & ~ours
    if _may_castle(board):
        for move in board.generate_castling_moves():
            mask |= chess.BB_SQUARES[move.to_square]
    pawns = board.pawns & ours
    mask |= _pawn_attacks(pawns, us) & board.occupied_co[not us]
    if us == chess.WHITE:
        single = (pawns << 8) & ~occupied & chess.BB_ALL
        double = (single << 8) & ~occupied & (chess.BB_RANK_3 | chess.BB_RANK_4)
    else:
        single = (pawns >> 8) & ~occupied
        double = (single >> 8) & ~occupied & (chess.BB_RANK_6 | chess.BB_RANK_5)
    mask |= single | double
    if board.ep_square is not None and any(True for _ in board.generate_pseudo_legal_ep()):
        mask |= chess.BB_SQUARES[board.ep_square]
    return mask


# ---------------------------------------------------------------------------- strategy flags


def _lines_to(board: chess.Board, square: int) -> tuple[int, int]:
    """Squares from which a diagonal / an orthogonal slider attacks ``square`` now."""
    occupied = board.occupied
    diagonal = chess.BB_DIAG_ATTACKS[square][chess.BB_DIAG_MASKS[square] & occupied]
    orthogonal = (chess.BB_RANK_ATTACKS[square][chess.BB_RANK_MASKS[square] & occupied]
                  | chess.BB_FILE_ATTACKS[square][chess.BB_FILE_MASKS[square] & occupied])
    return diagonal, orthogonal


def _sole_blockers(board: chess.Board, king: int, slider_color: bool, blocker_color: bool
                   ) -> int:
    """Squares of ``blocker_color`` pieces that are the only piece between a
    ``slider_color`` slider and the square ``king`` (on the slider's kind of line)."""
    snipers = ((chess.BB_RANK_ATTACKS[king][0] | chess.BB_FILE_ATTACKS[king][0])
               & (board.rooks | board.queens)
               | chess.BB_DIAG_ATTACKS[king][0] & (board.bishops | board.queens))
    snipers &= board.occupied_co[slider_color]
    out = 0
    for sniper in chess.scan_reversed(snipers):
        between = chess.between(king, sniper) & board.occupied
        if between and not between & (between - 1) and between & board.occupied_co[blocker_color]:
            out |= between
    return out


def _checking_moves(board: chess.Board, in_check: bool | None = None
                    ) -> Iterator[chess.Move]:
    """Every legal move of the side to move that gives check (each once), for a board whose
    enemy king is not in check now (true for the side to move of a legal position).

    Without check on the board, a non-king move is legal when its piece is not pinned or stays
    on the pin's line, and a direct check lands a piece on a square from which its type attacks
    the enemy king through the current occupancy; those moves are built from bitboards. Moves
    of pieces that shield the enemy king from their own sliders (discovered checks),
    promotions, en passant and castling are generated by python-chess and tested with
    ``gives_check``; so is every move when the side to move is in check (``in_check``: known
    already, else looked up)."""
    us, them = board.turn, not board.turn
    enemy_king = board.king(them)
    if enemy_king is None:
        return
    if board.is_check() if in_check is None else in_check:
        yield from (m for m in board.generate_legal_moves() if board.gives_check(m))
        return
    ours, theirs, occupied = board.occupied_co[us], board.occupied_co[them], board.occupied
    discovered = _sole_blockers(board, enemy_king, us, us)
    if discovered:
        yield from (m for m in board.generate_legal_moves(discovered, chess.BB_ALL)
                    if board.gives_check(m))
    own_king = msb_or_none(board.kings & ours)
    pinned = -1  # looked up when a move is found (most positions have none)
    diagonal, orthogonal = _lines_to(board, enemy_king)
    for pieces, check_squares in ((board.knights, chess.BB_KNIGHT_ATTACKS[enemy_king]),
                                  (board.bishops, diagonal), (board.rooks, orthogonal),
                                  (board.queens, diagonal | orthogonal)):
        if not check_squares & ~ours:
            continue
        for square in _scan(pieces & ours & ~discovered):
            targets = board.attacks_mask(square) & ~ours & check_squares
            if targets:
                if pinned < 0:
                    pinned = _sole_blockers(board, own_king, them, us) if own_king is not None \
                        else 0
                if pinned & chess.BB_SQUARES[square]:
                    targets &= board.pin_mask(us, square)
            for target in _scan(targets):
                yield chess.Move(square, target)
    pawns = board.pawns & ours & ~discovered
    backrank = chess.BB_RANK_8 if us == chess.WHITE else chess.BB_RANK_1
    pawn_checks = chess.BB_PAWN_ATTACKS[them][enemy_king] & ~backrank
    step = 8 if us == chess.WHITE else -8
    start_rank = chess.BB_RANK_2 if us == chess.WHITE else chess.BB_RANK_7
    # the pawns that can reach a pawn-check square at all (shifts back from those squares)
    reach = _pawn_attacks(pawn_checks & theirs, them)
    if us == chess.WHITE:
        reach |= (pawn_checks & ~occupied) >> 8
        reach |= ((pawn_checks & ~occupied & chess.BB_RANK_4) >> 8 & ~occupied) >> 8
    else:
        reach |= (pawn_checks & ~occupied) << 8 & chess.BB_ALL
        reach |= ((pawn_checks & ~occupied & chess.BB_RANK_5) << 8 & ~occupied) << 8
    for square in _scan(pawns & reach):
        targets = chess.BB_PAWN_ATTACKS[us][square] & theirs
        push = chess.BB_SQUARES[square + step]  # never off the board: no pawn on a back rank
        if not push & occupied:
            targets |= push
            if chess.BB_SQUARES[square] & start_rank and not chess.BB_SQUARES[square + 2 * step] \
                    & occupied:
                targets |= chess.BB_SQUARES[square + 2 * step]
        targets &= pawn_checks
        if targets:
            if pinned < 0:
                pinned = _sole_blockers(board, own_king, them, us) if own_king is not None else 0
            if pinned & chess.BB_SQUARES[square]:
                targets &= board.pin_mask(us, square)
        for target in _scan(targets):
            yield chess.Move(square, target)
    promoting = pawns & (chess.BB_RANK_7 if us == chess.WHITE else chess.BB_RANK_2)
    if promoting:
        yield from (m for m in board.generate_legal_moves(promoting, backrank)
                    if board.gives_check(m))
    if board.ep_square is not None and pawns & chess.BB_PAWN_ATTACKS[them][board.ep_square]:
        yield from (m for m in board.generate_legal_moves(pawns, chess.BB_SQUARES[board.ep_square])
                    if board.is_en_passant(m) and board.gives_check(m))
    # castling checks with its rook only (a king cannot): the rook's square must share a line
    # with the enemy king
    rook_squares = (chess.BB_FILE_D | chess.BB_FILE_F) & (chess.BB_RANK_1 if us == chess.WHITE
                                                         else chess.BB_RANK_8)
    if (_may_castle(board) and not board.kings & ours & discovered
            and rook_squares & (chess.BB_RANK_ATTACKS[enemy_king][0]
                                | chess.BB_FILE_ATTACKS[enemy_king][0])):
        yield from (m for m in board.generate_castling_moves() if board.gives_check(m))


def msb_or_none(mask: int) -> int | None:
    return mask.bit_length() - 1 if mask else None


def _can_check(board: chess.Board, in_check: bool) -> bool:
    return any(True for _ in _checking_moves(board, in_check))


def _mate_threat(board: chess.Board, in_check: bool) -> bool:
    """The opponent would have a mating move if it were its turn: each of its checking moves
    is played and tested with ``is_checkmate`` unless the checked king keeps a safe flight
    square after it (then it is no mate)."""
    turn, ep_square = board.turn, board.ep_square
    board.turn, board.ep_square = not turn, None  # flipped in place (a copy costs more)
    try:
        moves = (_checking_moves_in_check(board) if in_check
                 else list(_checking_moves(board, in_check=False)))
        for move in moves:
            if _keeps_safe_flight(board, move):
                continue
            board.push(move)
            mate = board.is_checkmate()
            board.pop()
            if mate:
                return True
        return False
    finally:
        board.turn, board.ep_square = turn, ep_square


def _checking_moves_in_check(board: chess.Board) -> list[chess.Move]:
    """The legal checking moves of the side to move when the enemy king is in check already
    (the mate threat's flipped board of a side in check): a move keeps the check unless it
    moves a checking piece, lands between a checking slider and the king, or castles; only
    those are tested with ``gives_check``."""
    king = board.king(not board.turn)
    if king is None:
        return []
    checkers = board.attackers_mask(board.turn, king)
    lines = 0
    for checker in _scan(checkers):
        lines |= chess.between(king, checker)
    return [m for m in board.generate_legal_moves()
            if (not checkers & chess.BB_SQUARES[m.from_square]
                and not lines & chess.BB_SQUARES[m.to_square] and not board.is_castling(m))
            or board.gives_check(m)]


def _keeps_safe_flight(board: chess.Board, move: chess.Move) -> bool:
    """After ``move`` (a legal non-castling move of the side to move), the enemy king can step
    to a square next to it that holds no piece of its own and that no piece of the mover
    attacks, counted with the king lifted off the board (so x-rays through it count): then the
    move is no mate. Squares the moved piece lands on are never counted safe."""
    if board.is_castling(move):
        return False
    us, them = board.turn, not board.turn
    king = board.king(them)
    if king is None:
        return False
    origin, target = chess.BB_SQUARES[move.from_square], chess.BB_SQUARES[move.to_square]
    occupied = (board.occupied & ~origin | target) & ~chess.BB_SQUARES[king]
    piece_type = move.promotion or board.piece_type_at(move.from_square)
    to = move.to_square
    if piece_type == chess.PAWN:
        moved = chess.BB_PAWN_ATTACKS[us][to]
    elif piece_type == chess.KNIGHT:
        moved = chess.BB_KNIGHT_ATTACKS[to]
    elif piece_type == chess.KING:
        moved = chess.BB_KING_ATTACKS[to]
    else:
        moved = 0
        if piece_type in (chess.BISHOP, chess.QUEEN):
            moved = chess.BB_DIAG_ATTACKS[to][chess.BB_DIAG_MASKS[to] & occupied]
        if piece_type in (chess.ROOK, chess.QUEEN):
            moved |= (chess.BB_RANK_ATTACKS[to][chess.BB_RANK_MASKS[to] & occupied]
                      | chess.BB_FILE_ATTACKS[to][chess.BB_FILE_MASKS[to] & occupied])
    flights = chess.BB_KING_ATTACKS[king] & ~board.occupied_co[them] & ~target & ~moved
    for flight in _scan(flights):
        if not board.attackers_mask(us, flight, occupied) & ~origin:
            return True
    return False


def _any_pin(board: chess.Board) -> bool:
    for color in (chess.WHITE, chess.BLACK):
        king = board.king(color)
        if king is not None and _sole_blockers(board, king, not color, color):
            return True
    return False


#: attacker -> the enemy piece types whose double attack makes a fork (as properties.FORK_TARGETS)
_FORK_TARGETS = {1: (2, 3, 4, 5, 6), 2: (4, 5, 6), 3: (4, 5, 6), 4: (5, 6)}


def _forks(board: chess.Board, attackers: tuple[int, ...]) -> bool:
    color = board.turn
    enemy = board.occupied_co[not color]
    for piece_type in attackers:
        targets = 0
        for target in _FORK_TARGETS[piece_type]:
            targets |= board.pieces_mask(target, not color)
        targets &= enemy
        if not targets & (targets - 1):  # fewer than two targets on the board
            continue
        pieces = board.pieces_mask(piece_type, color)
        if piece_type == chess.PAWN:  # a pawn forks only if both its capture squares do
            both = (targets >> 7) & (targets >> 9) if color == chess.WHITE else \
                (targets << 7) & (targets << 9) & chess.BB_ALL
            pieces &= both & _NOT_A & _NOT_H
        for square in _scan(pieces):
            hits = board.attacks_mask(square) & targets
            if hits & (hits - 1) and not board.is_pinned(color, square):
                return True
    return False


def _can_capture_queen(board: chess.Board) -> bool:
    queens = board.pieces_mask(chess.QUEEN, not board.turn)
    attackers = 0
    for queen in _scan(queens):
        attackers |= board.attackers_mask(board.turn, queen)
    return bool(attackers) and any(True for _ in board.generate_legal_moves(attackers, queens))


def _connected_rooks(board: chess.Board) -> bool:
    rooks = board.pieces_mask(chess.ROOK, board.turn)
    return any(board.attacks_mask(a) & rooks for a in _scan(rooks))


def _ambiguous_moves(board: chess.Board) -> bool:
    """Two legal moves of one piece type (pawns aside) to one square: only squares two such
    pieces both attack (and do not hold an own piece) can be one."""
    ours = board.occupied_co[board.turn]
    for piece_type in (chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN):
        pieces = board.pieces_mask(piece_type, board.turn)
        if not pieces & (pieces - 1):
            continue
        seen = twice = 0
        for square in _scan(pieces):
            attacks = board.attacks_mask(square) & ~ours
            twice |= seen & attacks
            seen |= attacks
        if not twice:
            continue
        landed: set[int] = set()
        for move in board.generate_legal_moves(pieces, twice):
            if move.to_square in landed:
                return True
            landed.add(move.to_square)
    return False


def _can_claim_draw(board: chess.Board, repeated: bool) -> bool:
    """``board.can_claim_draw()``; ``repeated`` is False while no position of the game so far
    occurred twice, and then no threefold claim is possible."""
    return board.can_claim_fifty_moves() or (repeated and board.can_claim_threefold_repetition())


def strategy_flags(board: chess.Board, repeated: bool = True) -> list[bool]:
    """Every strategy flag of ``board``, in :data:`FLAG_NAMES` order. ``repeated=False`` says
    no position of the game so far occurred twice (skips the threefold test)."""
    turn = board.turn
    bishops = board.pieces_mask(chess.BISHOP, turn)
    knight_fork = _forks(board, (chess.KNIGHT,))
    in_check = board.is_check()
    return [
        in_check,
        _any_pin(board),
        knight_fork,
        knight_fork or _forks(board, (chess.PAWN, chess.BISHOP, chess.ROOK)),
        board.has_castling_rights(turn),
        board.has_kingside_castling_rights(turn),
        board.has_queenside_castling_rights(turn),
        board.has_legal_en_passant(),
        _can_claim_draw(board, repeated),
        _can_check(board, in_check),
        bool(bishops & (bishops - 1)),
        _mate_threat(board, in_check),
        _can_capture_queen(board),
        bool(board.pieces_mask(chess.QUEEN, turn)),
        _connected_rooks(board),
        _ambiguous_moves(board),
    ]


# ---------------------------------------------------------------------------- positions


def _coarse_key(board: chess.Board) -> tuple[int, ...]:
    """Equal whenever python-chess's transposition keys are equal (a coarser key), so its
    counts bound theirs from above."""
    return (board.pawns, board.knights, board.bishops, board.rooks, board.queens, board.kings,
            board.occupied_co[True], int(board.turn))


def completed_sans(text: str) -> list[str]:
    """The SAN moves of movetext ``text`` completed by its last character (followed by a
    space)."""
    return [tok.split(".")[-1] for tok in text[1:].split(" ")[:-1] if tok.split(".")[-1]]


_PIECE_LETTERS = {"N": chess.KNIGHT, "B": chess.BISHOP, "R": chess.ROOK, "Q": chess.QUEEN,
                  "K": chess.KING}


def push_san(board: chess.Board, san: str) -> None:
    """``board.push_san(san)`` for SAN that python-chess wrote for a legal move: the move is
    read off the bitboards when only one piece fits (python-chess's parser generates legal
    moves, the larger part of replaying a game); castling and ambiguous cases go to it."""
    text = san.rstrip("+#")
    letter = text[0]
    if letter == "O":
        board.push_san(san)
        return
    us = board.turn
    if letter in _PIECE_LETTERS:
        to = chess.parse_square(text[-2:])
        sources = board.attackers_mask(us, to) & board.pieces_mask(_PIECE_LETTERS[letter], us)
        for hint in text[1:-2].replace("x", ""):
            sources &= chess.BB_FILES[ord(hint) - 97] if hint.isalpha() else \
                chess.BB_RANKS[int(hint) - 1]
        if sources and not sources & (sources - 1):
            board.push(chess.Move(sources.bit_length() - 1, to))
        else:
            board.push_san(san)
        return
    promotion = None
    if "=" in text:
        text, piece = text.split("=")
        promotion = _PIECE_LETTERS[piece]
    to = chess.parse_square(text[-2:])
    back = -8 if us == chess.WHITE else 8
    if "x" in text:
        origin = chess.square(ord(letter) - 97, chess.square_rank(to + back))
    else:
        origin = to + back if board.pawns & chess.BB_SQUARES[to + back] else to + 2 * back
    board.push(chess.Move(origin, to, promotion))


def label_positions(games: ChessGames, index_P2: np.ndarray, report: Report | None = None
                    ) -> ChessBoardLabels:
    """Threats, pseudo-legal destinations and strategy flags at the positions ``index_P2``
    ([game, character]: the board after the moves completed by that character). Each game is
    replayed once, on one board, and labelled in place."""

    n = len(index_P2)
    threats = np.zeros(n, dtype=np.uint64)
    pseudo = np.zeros(n, dtype=np.uint64)
    strategy = np.zeros((n, len(FLAG_NAMES)), dtype=bool)
    order = np.lexsort((index_P2[:, 1], index_P2[:, 0]))
    current_game, done, repeated = -1, 0, False
    board = chess.Board()
    sans: list[str] = []
    seen: set[tuple[int, ...]] = set()
    if report is not None:
        report(0, n)  # labelling starts now: the rate is the labeller's own
    for i, row in enumerate(order):
        g, pos = int(index_P2[row, 0]), int(index_P2[row, 1])
        if g != current_game:
            board, sans, done, current_game = chess.Board(), completed_sans(games.texts[g]), 0, g
            seen, repeated = {_coarse_key(board)}, False
        plies = games.texts[g][:pos + 1].count(" ")
        while done < plies:
            push_san(board, sans[done])
            done += 1
            key = _coarse_key(board)
            repeated = repeated or key in seen
            seen.add(key)
        threats[row] = threats_mask(board)
        pseudo[row] = pseudo_legal_destinations_mask(board)
        strategy[row] = strategy_flags(board, repeated)
        if report is not None and (i % 500 == 499 or i == n - 1):
            report(i + 1, n)
    from saelab.boardgame.othello import unpack_bits
    return ChessBoardLabels(unpack_bits(threats), unpack_bits(pseudo), strategy)


# ---------------------------------------------------------------------------- disk cache


def cache_key(games: ChessGames, index_P2: np.ndarray) -> str:
    """Hash of the games' movetexts, the labelled positions and :data:`LABEL_VERSION`."""
    digest = hashlib.sha256(f"chess-labels-v{LABEL_VERSION}\n".encode())
    for text in games.texts:
        digest.update(text.encode() + b"\n")
    digest.update(np.ascontiguousarray(index_P2, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def cached_label_positions(games: ChessGames, index_P2: np.ndarray, cache_dir: Path | None,
                           report: Report | None = None) -> ChessBoardLabels:
    """:func:`label_positions`, read from ``cache_dir`` when these games and positions were
    labelled before (by this label version), else computed and written there atomically."""
    if cache_dir is None:
        return label_positions(games, index_P2, report)
    path = Path(cache_dir) / f"chess_labels_{cache_key(games, index_P2)}.npz"
    if path.exists():
        with np.load(path) as saved:
            labels = ChessBoardLabels(saved["threats"], saved["pseudo_legal_destinations"],
                                      saved["strategy"])
        if labels.strategy.shape == (len(index_P2), len(FLAG_NAMES)):
            if report is not None:
                report(len(index_P2), len(index_P2))
            return labels
    labels = label_positions(games, index_P2, report)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, threats=labels.threats,
                        pseudo_legal_destinations=labels.pseudo_legal_destinations,
                        strategy=labels.strategy)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return labels
