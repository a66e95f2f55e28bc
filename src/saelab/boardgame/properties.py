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
to move, and "the side to move" / "the opponent" are White / Black there):

- ``piece``: the piece on each square, 12 classes (an empty square is none; 768 cells).
- ``piece_no_initial``: the same cells, false wherever the square holds the piece it held in
  the initial position (the paper's headline chess property: blanks and initial squares
  masked, so "a rook on a1" at move 1 does not count).
- ``legal_destinations`` / ``pseudo_legal_destinations``: squares some legal (pseudo-legal)
  move of the side to move lands on (64 cells each).
- ``threats``: squares the opponent attacks (64 cells; the paper's "squares attacked by Black").
- One property per whole-board flag (1 cell each), the paper's *strategy* properties, averaged
  together as the ``strategy`` group: check, pin, knight_fork, any_fork, the castling rights,
  en_passant, can_claim_draw, can_check, bishop_pair, mate_threat, can_capture_queen,
  has_queen, connected_rooks, ambiguous_moves (definitions in :data:`STRATEGY_FLAGS`).

Each property also has a ``*_for_prefix`` helper that labels one game prefix (used by the tests
on hand-checked positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saelab.boardgame import chess_games, othello

SQUARE_NAMES = tuple(othello.square_name(s) for s in range(64))


@dataclass(frozen=True)
class BoardProperty:
    """A named group of binary cells and how to compute them from a game batch's positions.

    ``paper_cells`` is the denominator the reference code (SAE_BoardGameEval) divides coverage
    by: the full one-hot size minus a masked class, so cells that can never be true still count
    (0 = ``n_cells``). ``group`` names an average the paper reports over several properties
    (chess ``strategy``).
    """

    name: str
    cell_names: tuple[str, ...]
    labels: Callable[[Any, np.ndarray], np.ndarray]  # (games, (P, 2) [game, pos]) -> (P, cells)
    paper_cells: int = 0
    group: str = ""

    @property
    def n_cells(self) -> int:
        return len(self.cell_names)

    @property
    def paper_denominator(self) -> int:
        return self.paper_cells or self.n_cells


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
    # the reference code's blank-masked config names no masked class: it divides by 8·8·3
    BoardProperty("mine_theirs", _square_cells(("mine", "theirs")), othello_mine_theirs,
                  paper_cells=192),
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


def initial_pieces() -> np.ndarray:
    """``(64,)`` piece class per square in the initial position (0 = empty)."""
    return chess_games.board_state(_initial_board()).pieces.astype(np.int64)


def _initial_board() -> Any:
    import chess
    return chess.Board()


def chess_piece_no_initial(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 768)``: like :func:`chess_piece`, but a square holding its initial piece is no
    cell (blanks and initial squares masked, Karvonen et al.'s headline chess property)."""
    pieces = games.pieces[index_P2[:, 0], index_P2[:, 1]].astype(np.int64)
    pieces = np.where(pieces == initial_pieces()[None, :], 0, pieces)
    one_hot = pieces[:, None, :] == np.arange(1, 13)[None, :, None]
    return one_hot.reshape(len(index_P2), -1)


def chess_legal_destinations(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, 64)``: squares a legal move of the side to move ends on."""
    return othello.unpack_bits(games.legal_destinations[index_P2[:, 0], index_P2[:, 1]])


# ------------------------------------------------------------- chess boards: the reference
#
# The definitions below are the readable reference of the board-based chess properties
# (threats, pseudo-legal destinations, the strategy flags): each reads one python-chess board,
# plays and undoes moves where it must, a few ms per position. The labeller computes the same
# labels from bitboards (saelab.boardgame.chess_labels, about 20x faster);
# tests/test_boardgame_chess_labels.py checks the two agree on positions from real games.

def boards_at(games: chess_games.ChessGames, index_P2: np.ndarray) -> list[Any]:
    """The python-chess ``Board`` at every position (moves completed by that character), each
    game replayed once."""
    from saelab.boardgame import chess_labels
    out: list[Any] = [None] * len(index_P2)
    order = np.lexsort((index_P2[:, 1], index_P2[:, 0]))
    current_game, sans, done = -1, [], 0
    board: Any = None
    for row in order:
        g, pos = int(index_P2[row, 0]), int(index_P2[row, 1])
        if g != current_game:
            board, sans, done = _initial_board(), chess_labels.completed_sans(games.texts[g]), 0
            current_game = g
        plies = games.texts[g][:pos + 1].count(" ")
        while done < plies:
            board.push_san(sans[done])
            done += 1
        out[row] = board.copy(stack=True)
    return out


def _square_bits(squares: Any) -> np.ndarray:
    bits = np.zeros(64, dtype=bool)
    bits[list(squares)] = True
    return bits


def board_threats(board: Any) -> np.ndarray:
    """``(64,)``: squares the opponent of the side to move attacks."""
    import chess
    return _square_bits(s for s in chess.SQUARES if board.is_attacked_by(not board.turn, s))


def board_pseudo_legal_destinations(board: Any) -> np.ndarray:
    """``(64,)``: squares a pseudo-legal move of the side to move ends on."""
    return _square_bits(m.to_square for m in board.pseudo_legal_moves)


def _board_square_property(field: str
                           ) -> Callable[[chess_games.ChessGames, np.ndarray], np.ndarray]:
    def labels(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
        from saelab.boardgame import chess_labels
        out: np.ndarray = getattr(chess_labels.label_positions(games, index_P2), field)
        return out
    return labels


# ---------------------------------------------------------------------------- strategy flags

#: attacker -> the enemy pieces that make a double attack a fork (worth more than the attacker,
#: or the king), as in the reference code's any-fork property
FORK_TARGETS = {1: (2, 3, 4, 5, 6), 2: (4, 5, 6), 3: (4, 5, 6), 4: (5, 6)}


def _forks(board: Any, attackers: tuple[int, ...]) -> bool:
    color = board.turn
    for piece_type in attackers:
        targets = FORK_TARGETS[piece_type]
        for square in board.pieces(piece_type, color):
            if board.is_pinned(color, square):
                continue
            hits = sum(1 for s in board.attacks(square)
                       if (p := board.piece_at(s)) is not None and p.color != color
                       and p.piece_type in targets)
            if hits >= 2:
                return True
    return False


def _any_pin(board: Any) -> bool:
    import chess
    return any(board.is_pinned(color, s) for color in (chess.WHITE, chess.BLACK)
               for s in chess.scan_forward(board.occupied_co[color]))


def reference_mate_threat(board: Any) -> bool:
    """The opponent would have a mating move if it were its turn."""
    flipped = board.copy(stack=False)
    flipped.turn = not board.turn
    flipped.ep_square = None
    for move in flipped.legal_moves:
        if flipped.gives_check(move):
            flipped.push(move)
            mate = flipped.is_checkmate()
            flipped.pop()
            if mate:
                return True
    return False


def _can_capture_queen(board: Any) -> bool:
    import chess
    queens = board.pieces(chess.QUEEN, not board.turn)
    return any(m.to_square in queens for m in board.legal_moves)


def _connected_rooks(board: Any) -> bool:
    import chess
    rooks = list(board.pieces(chess.ROOK, board.turn))
    return any(b in board.attacks(a) for i, a in enumerate(rooks) for b in rooks[i + 1:])


def _ambiguous_moves(board: Any) -> bool:
    """Two pieces of one type (pawns aside: SAN never disambiguates them) of the side to move
    can go to the same square, so the move's SAN needs a file or rank."""
    import chess
    seen: set[tuple[int, int]] = set()
    for move in board.legal_moves:
        piece_type = board.piece_type_at(move.from_square)
        if piece_type == chess.PAWN:
            continue
        key = (int(piece_type or 0), move.to_square)
        if key in seen:
            return True
        seen.add(key)
    return False


def _bishop_pair(board: Any) -> bool:
    import chess
    return len(board.pieces(chess.BISHOP, board.turn)) >= 2


def _has_queen(board: Any) -> bool:
    import chess
    return bool(board.pieces(chess.QUEEN, board.turn))


#: the paper's whole-board ("strategy") properties, from the side to move's view
STRATEGY_FLAGS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("check", lambda b: b.is_check(), "the side to move is in check"),
    ("pin", _any_pin, "some piece of either side is pinned to its king"),
    ("knight_fork", lambda b: _forks(b, (2,)),
     "an unpinned knight of the side to move attacks two or more of rook/queen/king"),
    ("any_fork", lambda b: _forks(b, (1, 2, 3, 4)),
     "an unpinned pawn/knight/bishop/rook of the side to move attacks two or more enemy "
     "pieces worth more than it (or the king)"),
    ("castling_rights", lambda b: b.has_castling_rights(b.turn),
     "the side to move may still castle on some side"),
    ("kingside_castling_rights", lambda b: b.has_kingside_castling_rights(b.turn),
     "the side to move may still castle kingside"),
    ("queenside_castling_rights", lambda b: b.has_queenside_castling_rights(b.turn),
     "the side to move may still castle queenside"),
    ("en_passant", lambda b: b.has_legal_en_passant(), "an en-passant capture is legal"),
    ("can_claim_draw", lambda b: b.can_claim_draw(),
     "the side to move can claim a draw (threefold repetition or fifty moves)"),
    ("can_check", lambda b: any(b.gives_check(m) for m in b.legal_moves),
     "some legal move gives check"),
    ("bishop_pair", _bishop_pair, "the side to move has two or more bishops"),
    ("mate_threat", reference_mate_threat,
     "the opponent would have a mating move if it were its turn"),
    ("can_capture_queen", _can_capture_queen, "a legal move captures the opponent's queen"),
    ("has_queen", _has_queen, "the side to move has a queen"),
    ("connected_rooks", _connected_rooks,
     "two rooks of the side to move see each other along a rank or file"),
    ("ambiguous_moves", _ambiguous_moves,
     "a move of the side to move needs a disambiguating file or rank in SAN"),
)


def board_strategy_flags(board: Any) -> np.ndarray:
    """``(len(STRATEGY_FLAGS),)`` bool: every strategy flag of one board."""
    return np.array([fn(board) for _, fn, _ in STRATEGY_FLAGS], dtype=bool)


def chess_strategy_table(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
    """``(P, len(STRATEGY_FLAGS))``: all strategy flags at every position, by the reference
    definitions (slow: the labeller uses :func:`chess_labels.label_positions`)."""
    boards = boards_at(games, index_P2)
    if not boards:
        return np.zeros((0, len(STRATEGY_FLAGS)), dtype=bool)
    return np.stack([board_strategy_flags(b) for b in boards])


def reference_board_labels(games: chess_games.ChessGames, index_P2: np.ndarray) -> Any:
    """Threats, pseudo-legal destinations and strategy flags at ``index_P2`` by the reference
    definitions (what ``label_all`` computed before chess_labels; the test oracle and the
    baseline of ``benchmarks/chess_labels_speed.py``), as a ``chess_labels.ChessBoardLabels``."""
    from saelab.boardgame import chess_labels
    boards = boards_at(games, index_P2)
    if not boards:
        return chess_labels.label_positions(games, index_P2)
    return chess_labels.ChessBoardLabels(
        np.stack([board_threats(b) for b in boards]),
        np.stack([board_pseudo_legal_destinations(b) for b in boards]),
        np.stack([board_strategy_flags(b) for b in boards]))


def _flag_property(j: int) -> Callable[[chess_games.ChessGames, np.ndarray], np.ndarray]:
    def labels(games: chess_games.ChessGames, index_P2: np.ndarray) -> np.ndarray:
        from saelab.boardgame import chess_labels
        return chess_labels.label_positions(games, index_P2).strategy[:, j:j + 1]
    return labels


CHESS_PROPERTIES = (
    BoardProperty("piece", _square_cells(chess_games.PIECE_CLASSES[1:]), chess_piece),
    BoardProperty("piece_no_initial", _square_cells(chess_games.PIECE_CLASSES[1:]),
                  chess_piece_no_initial),
    BoardProperty("legal_destinations", _square_cells(("dest",)), chess_legal_destinations),
    BoardProperty("pseudo_legal_destinations", _square_cells(("pseudo",)),
                  _board_square_property("pseudo_legal_destinations")),
    BoardProperty("threats", _square_cells(("threat",)), _board_square_property("threats")),
    *(BoardProperty(name, (name,), _flag_property(j), group="strategy")
      for j, (name, _, _) in enumerate(STRATEGY_FLAGS)),
)

#: the paper's chess headline property (pieces, blanks and initial squares masked)
CHESS_HEADLINE = "piece_no_initial"
PAPER_POSITIONS_PER_GAME = 20


def chess_positions(games: chess_games.ChessGames, max_per_game: int = 0) -> np.ndarray:
    """``(P, 2)`` [game, character index] of the ``.`` characters (just before White moves);
    with ``max_per_game`` > 0 only the first that many per game (the paper scores 20)."""
    dots = games.dot_mask()
    if max_per_game > 0:
        dots = dots & (np.cumsum(dots, axis=1) <= max_per_game)
    return np.argwhere(dots)


#: chess properties labelled from replayed boards (chess_labels), all at once
_BOARD_SQUARE_PROPERTIES = ("threats", "pseudo_legal_destinations")

Report = Callable[[int, int], None]  # (done, total) progress callback


def label_all(game: str, games: Any, index_P2: np.ndarray, report: Report | None = None,
              cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Labels of every property of ``game`` at the positions ``index_P2``. Chess boards are
    replayed once and every board-based property is labelled from them together
    (``report(done, total)`` is called as they are); with ``cache_dir`` those labels are
    read from / written to a cache keyed by the games, the positions and the label version."""
    props = properties_for(game)
    out = {p.name: p.labels(games, index_P2) for p in props
           if p.group != "strategy" and p.name not in _BOARD_SQUARE_PROPERTIES}
    if game != "chess":
        return out
    from saelab.boardgame import chess_labels  # imports python-chess
    boards = chess_labels.cached_label_positions(games, index_P2, cache_dir, report)
    flag_column = {name: j for j, name in enumerate(chess_labels.FLAG_NAMES)}
    for prop in props:
        if prop.group == "strategy":
            out[prop.name] = boards.strategy[:, flag_column[prop.name]][:, None]
        elif prop.name in _BOARD_SQUARE_PROPERTIES:
            out[prop.name] = getattr(boards, prop.name)
    return {p.name: out[p.name] for p in props}


def chess_labels_for_prefix(movetext: str) -> dict[str, np.ndarray]:
    """Labels of every chess property after the moves completed in ``movetext``."""
    board = chess_games.replay_prefix(movetext)
    state = chess_games.board_state(board)
    n = len(movetext)  # every character shows this state; only the last one is labelled
    games = chess_games.ChessGames(
        [movetext], chess_games.encode(movetext)[None], np.array([n]),
        np.repeat(state.pieces[None, None], n, axis=1),
        np.full((1, n), state.legal_destinations, dtype=np.uint64),
        np.repeat(state.flags[None, None], n, axis=1), np.full((1, n), state.white_to_move))
    index = np.array([[0, n - 1]], dtype=np.int64)
    return {name: labels[0] for name, labels in label_all("chess", games, index).items()}


def group_members(game: str) -> dict[str, list[str]]:
    """Property groups the paper averages over (chess: ``strategy``)."""
    groups: dict[str, list[str]] = {}
    for prop in properties_for(game):
        if prop.group:
            groups.setdefault(prop.group, []).append(prop.name)
    return groups


def properties_for(game: str) -> tuple[BoardProperty, ...]:
    if game == "othello":
        return OTHELLO_PROPERTIES
    if game == "chess":
        return CHESS_PROPERTIES
    raise ValueError(f"unknown game {game!r}; choose othello or chess")
