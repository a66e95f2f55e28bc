"""Per-game legal-move counts (``lm.GameHits``) and benchmarks/game_lm_paired.py.

An oracle that always predicts the move the game actually played is legal at every scored
position, in Othello and in chess (first character and the greedy-decoded move); a model that
names the square just played is never legal. The paired interval of the two is
exactly [1, 1], and of a model against itself [0, 0].
"""

from __future__ import annotations

import inspect
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from saelab.boardgame import chess_games, lm, othello
from tests.helpers import load_benchmark


def _bench() -> ModuleType:
    return load_benchmark("game_lm_paired")


class _Oracle(torch.nn.Module):
    """Logits that put the played continuation of a known game prefix first (zeros elsewhere)."""

    def __init__(self, sequences: list[list[int]], vocab: int, n_positions: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.config = SimpleNamespace(n_positions=n_positions)
        self.vocab = vocab
        self.next_of: dict[tuple[int, ...], int] = {}
        for seq in sequences:
            for t in range(len(seq) - 1):
                self.next_of[tuple(seq[:t + 1])] = seq[t + 1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: list[list[int]] | None = None,
                use_cache: bool = False) -> SimpleNamespace:
        """Like a causal LM: without ``cache`` the rows are read from the start (padding after
        ``attention_mask``'s end); with it, each row's fed characters continue its sequence,
        which this oracle keeps as its "cache"."""
        rows = input_ids.tolist()
        if cache is None:
            keep = [len(r) for r in rows] if attention_mask is None else attention_mask.sum(1)
            seqs = [r[:int(n)] for r, n in zip(rows, keep, strict=True)]
            starts = [0] * len(rows)
        else:
            starts = [len(c) for c in cache]
            seqs = [c + r for c, r in zip(cache, rows, strict=True)]
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, seq in enumerate(seqs):
            for t in range(input_ids.shape[1]):
                nxt = self.next_of.get(tuple(seq[:starts[b] + t + 1]))
                if nxt is not None:
                    logits[b, t, nxt] = 1.0
        return SimpleNamespace(logits=logits, cache=seqs)


class _Repeat(torch.nn.Module):
    """Names the square just played: occupied, so never a legal next move."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids, self.vocab).float())


def test_othello_hits_per_game_and_paired_interval() -> None:
    games = othello.random_games(12, seed=5)
    tokens = games.tokens()
    oracle = _Oracle([[int(x) for x in row if x] for row in tokens], othello.VOCAB_SIZE,
                     othello.MAX_MOVES)
    occupied = _Repeat(othello.VOCAB_SIZE)
    good, bad = lm.othello_legal_hits(oracle, games), lm.othello_legal_hits(occupied, games)
    np.testing.assert_array_equal(good.scored, games.lengths - 1)
    np.testing.assert_array_equal(good.hits, good.scored)
    assert good.accuracy == 1.0 and bad.accuracy == 0.0
    assert lm.othello_legal_accuracy(oracle, games) == 1.0
    bench = _bench()
    assert bench.paired_interval(good, bad, resamples=200) == (1.0, 1.0)
    assert bench.paired_interval(good, good, resamples=200) == (0.0, 0.0)


def test_othello_legal_mass_counts_the_softmax_on_legal_squares() -> None:
    """One-hot logits of 1 give the marked square e/(e + 59) and every other square 1/(e + 59)
    (the pad's logit dropped): the oracle marks the played move, which is legal, so a position
    with n legal moves gets (e + n - 1)/(e + 59); marking the occupied square just played gets
    n/(e + 59). A misaligned token-to-square map or a kept pad logit would change both."""
    games = othello.random_games(6, seed=8)
    tokens = games.tokens()
    oracle = _Oracle([[int(x) for x in row if x] for row in tokens], othello.VOCAB_SIZE,
                     othello.MAX_MOVES)
    n_legal = othello.unpack_bits(games.next_legal[:, :-1]).sum(-1)
    scored = games.moves[:, 1:] >= 0
    e = np.e
    for model, numerator in ((oracle, e + n_legal - 1), (_Repeat(othello.VOCAB_SIZE), n_legal)):
        mass = lm.othello_scores(model, games)["legal_mass"]
        expected = np.where(scored, numerator / (e + 59), 0.0).sum(1)
        np.testing.assert_allclose(mass.hits, expected, rtol=1e-5)
        np.testing.assert_array_equal(mass.scored, scored.sum(1))
    # zero logits everywhere (an oracle that knows no game): the mass is n/60 per position
    blank = _Oracle([], othello.VOCAB_SIZE, othello.MAX_MOVES)
    other = othello.random_games(4, seed=lm.held_out_seed(1))
    n_other = othello.unpack_bits(other.next_legal[:, :-1]).sum(-1)[other.moves[:, 1:] >= 0]
    accuracies = lm.legal_move_accuracy(blank, "othello", 4, seed=lm.held_out_seed(1))
    assert set(accuracies) == {"top1_legal", "legal_mass"}
    assert accuracies["legal_mass"] == pytest.approx(float(np.mean(n_other / 60)), rel=1e-5)


def test_paired_interval_resamples_whole_games() -> None:
    # game 0: 10 of 10 for a, 0 for b; game 1: 0 of 30 for both. Resampling positions would
    # centre near 0.25; resampling games gives differences of 0, 0.25 or 1 only.
    a = lm.GameHits(np.array([10, 0]), np.array([10, 30]))
    b = lm.GameHits(np.array([0, 0]), np.array([10, 30]))
    lo, hi = _bench().paired_interval(a, b, resamples=500)
    assert lo == 0.0 and hi == 1.0
    # paired: the same resampled games for both, so a model against itself differs by 0
    uneven = lm.GameHits(np.array([3, 9, 0, 5]), np.array([10, 10, 10, 10]))
    assert _bench().paired_interval(uneven, uneven, resamples=500) == (0.0, 0.0)


def test_chess_hits_with_an_oracle() -> None:
    pytest.importorskip("chess")
    games = chess_games.random_games(2, seed=3, max_chars=64)
    sequences = [chess_games.encode(text).tolist() for text in games.texts]
    oracle = _Oracle(sequences, chess_games.VOCAB_SIZE, 64)
    first = lm.chess_first_char_hits(oracle, games)
    greedy = lm.chess_greedy_hits(oracle, games)
    assert first.scored.sum() > 0 and first.accuracy == 1.0
    np.testing.assert_array_equal(greedy.scored, first.scored)
    assert greedy.accuracy == 1.0


def test_boards_at_and_san_first_char_match_the_reference() -> None:
    pytest.importorskip("chess")
    for game in chess_games.iter_games(6, seed=11, max_chars=256):
        text = game.text
        positions = list(range(len(text)))
        for i, board in zip(positions, chess_games.boards_at(text, positions), strict=True):
            reference = chess_games.replay_prefix(text[:i + 1])
            assert board.fen() == reference.fen(), (text, i)
            for move in board.legal_moves:
                assert chess_games.san_first_char(board, move) == board.san(move)[0]
    with pytest.raises(ValueError, match="must not decrease"):
        list(chess_games.boards_at(";1.e4 e5 ", [5, 3]))


def _uncached_greedy(model: torch.nn.Module, prefix: torch.Tensor, max_new: int) -> str:
    """Reference decode: the whole sequence re-read at every step, one prefix at a time."""
    stops = {chess_games.PAD_ID, chess_games.ALPHABET.index(".")}
    limit = int(lm.model_config(model).n_positions)
    seq = prefix.tolist()
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in stops:
                break
            out.append(nxt)
            seq.append(nxt)
            if len(seq) >= limit:
                break
    return chess_games.decode(out)


def test_cached_greedy_decoding_equals_rereading_every_step() -> None:
    """On the shipped chess model (a trained model is sensitive to positions and padding, which
    a random one hardly is): prefixes of many lengths in one batch, some at the context limit."""
    pytest.importorskip("chess")
    if not (lm.pretrained_path("chess") / "model.safetensors").exists():
        pytest.skip("the shipped chess model is not in this checkout")
    model, _ = lm.load_game_lm("chess")
    model.eval()
    limit = int(lm.model_config(model).n_positions)
    game = chess_games.random_games(1, seed=lm.held_out_seed(7), max_chars=limit)
    starts = np.flatnonzero(game.move_start_mask()[0])
    ids = torch.from_numpy(game.tokens[0])
    prefixes = [ids[:i + 1] for i in starts[::4]]
    prefixes += [ids[:limit - 2], ids[:limit]]  # decoding stops at the context limit
    got = lm.greedy_moves(model, prefixes, max_new=8)
    want = [_uncached_greedy(model, p, 8) for p in prefixes]
    assert got == want
    assert sum(len(m) > 2 for m in want) >= 3  # several steps decoded: the cache is exercised


class _PastKeyValuesApi(torch.nn.Module):
    """A model with the older transformers keyword (``past_key_values`` in and out)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: object = None,
                use_cache: bool = False) -> SimpleNamespace:
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=use_cache, cache=past_key_values)
        return SimpleNamespace(logits=out.logits, past_key_values=out.cache)


def test_greedy_decoding_passes_the_cache_under_either_keyword() -> None:
    pytest.importorskip("chess")
    cfg = lm.LMTrainConfig(game="chess", n_layer=1, d_model=16, n_head=2, max_chars=32)
    model = lm.build_model(cfg).eval()
    if "cache" not in inspect.signature(model.forward).parameters:
        pytest.skip("this transformers takes past_key_values itself")
    prefixes = [torch.from_numpy(chess_games.encode(t)) for t in (";1.", ";1.e4 ", ";1.e4 e5 2.")]
    assert lm.greedy_moves(_PastKeyValuesApi(model), prefixes) == lm.greedy_moves(model, prefixes)


def test_chess_scoring_reports_progress_per_game(capsys: pytest.CaptureFixture[str]) -> None:
    from saelab.cli import main

    model, _ = lm.load_game_lm("chess")
    seen: dict[str, list[tuple[int, int]]] = {}

    def counter(metric: str):
        return lambda done, total: seen.setdefault(metric, []).append((done, total))

    hits = lm.legal_move_hits(model, "chess", 3, seed=5, greedy_games=2, max_chars=64,
                              progress=counter)
    assert seen == {"first_char_legal": [(1, 3), (2, 3), (3, 3)],
                    "greedy_move_legal": [(1, 2), (2, 2)]}
    assert len(hits["first_char_legal"].scored) == 3
    capsys.readouterr()
    assert main(["boardgame", "lm-eval", "chess", "--games", "2", "--greedy-games", "1"]) == 0
    err = capsys.readouterr().err
    assert "first_char_legal: 2/2 games" in err and "greedy_move_legal: 1/1 games" in err
    assert "ETA" in err
