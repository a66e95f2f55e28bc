"""Chess games as character-level PGN movetext, with the board state at every character.

Games are played by a weak engine (python-chess for the rules): with probability
``greedy_prob`` a move captures the most valuable piece it can (ties broken at random), otherwise
it is a uniformly random legal move. That keeps games short of pure noise (pieces get traded,
mates happen) without needing a real engine.

Movetext looks like ``;1.e4 e5 2.Nf3 Nc6 3.Bb5`` and is cut to ``max_chars`` characters (it may
end inside a move). It is tokenised one character at a time over a 32-symbol alphabet.

Board state at a character: the board after every move *completed* by that character, where a
move is completed once the space after it has been read. At a ``.`` (just before White's move)
and at the space after White's move (just before Black's), every earlier move is complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # python-chess is an optional dependency, imported where it is used
    import chess

ALPHABET = " #+-.0123456789;=BKNOQRabcdefghx"
VOCAB_SIZE = len(ALPHABET)  # 32
START_CHAR = ";"
PAD_ID = ALPHABET.index(" ")  # padding is masked out of losses, so any id works
_CHAR_ID = {c: i for i, c in enumerate(ALPHABET)}

#: piece classes per square: 0 empty, 1-6 white PNBRQK, 7-12 black pnbrqk
PIECE_CLASSES = ("empty", "P", "N", "B", "R", "Q", "K", "p", "n", "b", "r", "q", "k")
FLAG_NAMES = ("in_check", "white_kingside_castle", "white_queenside_castle",
              "black_kingside_castle", "black_queenside_castle", "white_has_queen",
              "black_has_queen", "white_bishop_pair", "black_bishop_pair", "en_passant_possible")
_PIECE_VALUE = {1: 1, 2: 3, 3: 3, 4: 5, 5: 9, 6: 0}  # pawn..king (the king is never captured)


class ChessDataError(ValueError):
    """Unusable movetext (a character outside the alphabet, an illegal move)."""


def encode(text: str) -> np.ndarray:
    """Character ids of ``text``; raises ChessDataError on a character outside the alphabet."""
    bad = sorted(set(text) - set(ALPHABET))
    if bad:
        raise ChessDataError(f"characters {bad} are not in the chess alphabet {ALPHABET!r}")
    return np.array([_CHAR_ID[c] for c in text], dtype=np.int64)


def decode(ids: np.ndarray | list[int]) -> str:
    return "".join(ALPHABET[int(i)] for i in ids)


@dataclass
class BoardState:
    """What the properties read from one position (computed once per ply)."""

    pieces: np.ndarray  # (64,) int8 piece class per square (a1 = 0 ... h8 = 63)
    legal_destinations: int  # bitboard of squares the side to move can move to
    flags: np.ndarray  # (len(FLAG_NAMES),) bool
    white_to_move: bool


def board_state(board: chess.Board) -> BoardState:
    """Read a python-chess ``Board`` into a :class:`BoardState`."""
    import chess
    pieces = np.zeros(64, dtype=np.int8)
    for square, piece in board.piece_map().items():
        pieces[square] = piece.piece_type + (0 if piece.color == chess.WHITE else 6)
    destinations = 0
    for move in board.legal_moves:
        destinations |= 1 << move.to_square
    flags = np.array([
        board.is_check(),
        board.has_kingside_castling_rights(chess.WHITE),
        board.has_queenside_castling_rights(chess.WHITE),
        board.has_kingside_castling_rights(chess.BLACK),
        board.has_queenside_castling_rights(chess.BLACK),
        bool(board.pieces_mask(chess.QUEEN, chess.WHITE)),
        bool(board.pieces_mask(chess.QUEEN, chess.BLACK)),
        chess.popcount(board.pieces_mask(chess.BISHOP, chess.WHITE)) >= 2,
        chess.popcount(board.pieces_mask(chess.BISHOP, chess.BLACK)) >= 2,
        board.has_legal_en_passant(),
    ], dtype=bool)
    return BoardState(pieces, destinations, flags, board.turn == chess.WHITE)


def _choose_move(board: chess.Board, rng: np.random.Generator, greedy_prob: float
                 ) -> chess.Move:
    moves = list(board.legal_moves)
    if rng.random() < greedy_prob:
        values = [_capture_value(board, m) for m in moves]
        best = max(values)
        if best > 0:
            moves = [m for m, v in zip(moves, values, strict=True) if v == best]
    return moves[int(rng.integers(len(moves)))]


def _capture_value(board: chess.Board, move: chess.Move) -> int:
    if not board.is_capture(move):
        return 0
    if board.is_en_passant(move):
        return 1
    victim = board.piece_type_at(move.to_square)
    return _PIECE_VALUE[victim] if victim else 0


@dataclass
class ChessGame:
    """One game: its movetext and, per character, the index of the state it shows."""

    text: str
    sans: list[str]
    states: list[BoardState]  # states[k] = position after k plies
    char_ply: np.ndarray  # (len(text),) plies completed at each character


def play_game(rng: np.random.Generator, max_chars: int = 256,
              greedy_prob: float = 0.8) -> ChessGame:
    """Play one weak-engine game until it ends or its movetext passes ``max_chars``."""
    import chess

    board = chess.Board()
    text, sans, states = START_CHAR, [], [board_state(board)]
    ends: list[int] = []  # index of the space that completes each move
    while len(text) < max_chars and not _no_moves(board):
        move = _choose_move(board, rng, greedy_prob)
        san = board.san(move)
        prefix = f"{board.fullmove_number}." if board.turn == chess.WHITE else ""
        text += prefix + san + " "
        ends.append(len(text) - 1)
        board.push(move)
        sans.append(san)
        states.append(board_state(board))
    text = text[:max_chars]
    char_ply = np.searchsorted(np.array(ends, dtype=np.int64), np.arange(len(text)), side="right")
    return ChessGame(text, sans, states, char_ply.astype(np.int64))


def _no_moves(board: chess.Board) -> bool:
    return not any(True for _ in board.legal_moves) or board.is_insufficient_material()


@dataclass
class ChessGames:
    """A batch of games as padded character ids plus per-character board states.

    ``tokens[g, i]`` is character i of game g (``PAD_ID`` past ``lengths[g]``); ``pieces``,
    ``legal_destinations``, ``flags`` and ``white_to_move`` describe the board state at that
    character (see the module docstring for which moves count as completed).
    """

    texts: list[str]
    tokens: np.ndarray  # (G, L) int64
    lengths: np.ndarray  # (G,)
    pieces: np.ndarray  # (G, L, 64) int8
    legal_destinations: np.ndarray  # (G, L) uint64
    flags: np.ndarray  # (G, L, F) bool
    white_to_move: np.ndarray  # (G, L) bool

    @property
    def n_games(self) -> int:
        return len(self.texts)

    def move_start_mask(self) -> np.ndarray:
        """``(G, L)`` bool: characters after which a move's first character comes next: a
        ``.`` (White to move) or the space after White's move (Black to move)."""
        ids = self.tokens
        dot = ids == _CHAR_ID["."]
        space_after_white = (ids == PAD_ID) & ~self.white_to_move
        inside = np.arange(ids.shape[1])[None, :] < (self.lengths[:, None] - 1)
        return (dot | space_after_white) & inside

    def dot_mask(self) -> np.ndarray:
        """``(G, L)`` bool: the ``.`` characters (just before White moves), where chess
        properties are scored as in Karvonen et al."""
        inside = np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]
        return (self.tokens == _CHAR_ID["."]) & inside


def games_from_list(games: list[ChessGame], max_chars: int) -> ChessGames:
    """Stack games into padded arrays."""
    n = len(games)
    out = ChessGames([g.text for g in games], np.full((n, max_chars), PAD_ID, dtype=np.int64),
                     np.zeros(n, dtype=np.int64), np.zeros((n, max_chars, 64), dtype=np.int8),
                     np.zeros((n, max_chars), dtype=np.uint64),
                     np.zeros((n, max_chars, len(FLAG_NAMES)), dtype=bool),
                     np.zeros((n, max_chars), dtype=bool))
    for g, game in enumerate(games):
        length = len(game.text)
        out.tokens[g, :length] = encode(game.text)
        out.lengths[g] = length
        plies = np.concatenate([game.char_ply, np.full(max_chars - length, game.char_ply[-1])])
        out.pieces[g] = np.stack([s.pieces for s in game.states])[plies]
        out.legal_destinations[g] = np.array([s.legal_destinations for s in game.states],
                                             dtype=np.uint64)[plies]
        out.flags[g] = np.stack([s.flags for s in game.states])[plies]
        out.white_to_move[g] = np.array([s.white_to_move for s in game.states])[plies]
    return out


def iter_games(n: int, seed: int = 0, max_chars: int = 256,
               greedy_prob: float = 0.8) -> Iterator[ChessGame]:
    """``n`` seeded games, one after another (game i depends only on (seed, i))."""
    for i in range(n):
        yield play_game(np.random.default_rng([seed, i]), max_chars, greedy_prob)


def random_games(n: int, seed: int = 0, max_chars: int = 256,
                 greedy_prob: float = 0.8) -> ChessGames:
    """``n`` seeded weak-engine games with per-character board states."""
    return games_from_list(list(iter_games(n, seed, max_chars, greedy_prob)), max_chars)


def texts_only(n: int, seed: int = 0, max_chars: int = 256, greedy_prob: float = 0.8) -> list[str]:
    """Just the movetexts (for language-model training); the same games as random_games."""
    return [g.text for g in iter_games(n, seed, max_chars, greedy_prob)]


def replay_prefix(text: str) -> chess.Board:
    """The python-chess ``Board`` after the moves completed in movetext ``text``.

    Moves count as completed once followed by a space, matching the per-character states.
    """
    import chess

    if not text.startswith(START_CHAR):
        raise ChessDataError(f"movetext must start with {START_CHAR!r}, got {text[:10]!r}")
    board = chess.Board()
    for token in text[1:].split(" ")[:-1]:  # the last piece has no space after it yet
        san = token.split(".")[-1]
        if not san:
            continue
        try:
            board.push_san(san)
        except ValueError as err:
            raise ChessDataError(f"move {san!r} in {text!r} is not legal: {err}") from err
    return board


def boards_at(text: str, positions: Iterable[int]) -> Iterator[chess.Board]:
    """For each of the increasing ``positions`` i, the board :func:`replay_prefix` gives for
    ``text[:i + 1]``, replaying the game once instead of once per prefix.

    The same ``Board`` is yielded each time, advanced in place: use it before the next one.
    """
    import chess

    if not text.startswith(START_CHAR):
        raise ChessDataError(f"movetext must start with {START_CHAR!r}, got {text[:10]!r}")
    board = chess.Board()
    spaces = [k for k, char in enumerate(text) if char == " "]
    token_starts = [1] + [k + 1 for k in spaces]
    pushed, previous = 0, -1
    for i in positions:
        if i < previous:
            raise ValueError(f"positions must not decrease ({i} after {previous})")
        previous = i
        while pushed < len(spaces) and spaces[pushed] <= i:  # moves completed by a space
            san = text[token_starts[pushed]:spaces[pushed]].split(".")[-1]
            if san:
                try:
                    board.push_san(san)
                except ValueError as err:
                    raise ChessDataError(f"move {san!r} in {text!r} is not legal: {err}") from err
            pushed += 1
        yield board


def san_first_char(board: chess.Board, move: chess.Move) -> str:
    """``board.san(move)[0]`` without generating the whole SAN (which tests for check): ``O``
    for castling, the file of a pawn move, else the piece's letter."""
    import chess

    if board.is_castling(move):
        return "O"
    piece = board.piece_type_at(move.from_square)
    if piece is None:
        raise ChessDataError(f"no piece on {chess.square_name(move.from_square)} for {move}")
    if piece == chess.PAWN:
        return chess.FILE_NAMES[chess.square_file(move.from_square)]
    return chess.piece_symbol(piece).upper()
