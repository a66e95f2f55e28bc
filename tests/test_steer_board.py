"""Othello board interventions: cases, the top-N error count, exact probe edits, and a small
end-to-end run on the shipped Othello model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.boardgame import lm, othello
from saelab.boardgame import othello_search as search
from saelab.steer import board
from tests.helpers import small_sae


def test_errors_count_top_n_squares_that_are_not_legal() -> None:
    logits = torch.full((2, othello.VOCAB_SIZE), -10.0)
    sq = list(othello.PLAYABLE_SQUARES)
    # row 0: best squares are sq[0] > sq[1] > sq[2]; legal = {sq[0], sq[2]} -> top-2 has sq[1]
    logits[0, 1], logits[0, 2], logits[0, 3] = 3.0, 2.0, 1.0
    logits[0, 0] = 99.0  # the pad logit never counts
    # row 1: legal = {sq[5]} and it is the top prediction
    logits[1, 6] = 5.0
    legal = np.zeros((2, 64), dtype=bool)
    legal[0, [sq[0], sq[2]]] = True
    legal[1, sq[5]] = True
    assert board.errors(logits, legal).tolist() == [1, 0]


def test_cases_flip_a_disc_of_the_player_to_move_and_change_the_legal_moves() -> None:
    games = othello.random_games(6, seed=3)
    cases = board.find_cases(games, 40, seed=0)
    assert len(cases) == 40 and cases.n_valid >= 40
    for g, t, s, before, after in zip(cases.game, cases.ply, cases.square,
                                      cases.legal_original, cases.legal_edited, strict=True):
        nb = games.next_black[g, t]
        mine, theirs = ((games.black, games.white) if nb else (games.white, games.black))
        m, th = int(mine[g, t]), int(theirs[g, t])
        assert m >> int(s) & 1  # the square holds a disc of the player to move
        assert np.array_equal(np.flatnonzero(before), search.squares(search.legal(m, th)))
        edited = search.legal(m & ~(1 << int(s)), th | (1 << int(s)))
        assert np.array_equal(np.flatnonzero(after), search.squares(edited))
        assert not np.array_equal(before, after)


def test_probe_edit_sets_both_logits_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(192, 16, generator=gen)
    bias = torch.randn(192, generator=gen)
    editor = board.ProbeEditor(weight, bias, {5: (-2.0, 3.0)}, strength=1.0)
    x = torch.randn(4, 16, generator=gen)
    new = editor(x, 5)
    logits = new @ weight.T + bias
    torch.testing.assert_close(logits[:, 64 + 5], torch.full((4,), -2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[:, 128 + 5], torch.full((4,), 3.0), atol=1e-4, rtol=0)
    half = board.ProbeEditor(weight, bias, {5: (-2.0, 3.0)}, strength=0.5)(x, 5)
    torch.testing.assert_close(half - x, 0.5 * (new - x))


def test_small_run_on_the_shipped_othello_model() -> None:
    model, _ = lm.load_game_lm("othello")
    saes = {"topk": small_sae("topk", d_in=128, d_sae=256)}
    cfg = board.BoardInterventionConfig(layer=1, train_games=30, test_games=8, cases=40,
                                        probe_steps=30, max_latents=2)
    result = board.run(model, saes, cfg)
    probe, sae = result.scores
    assert probe.method == "linear probe" and sae.method == "SAE topk"
    for s in (probe, sae):
        assert s.n_cases == 40
        assert s.errors_before == probe.errors_before and s.errors_clean == probe.errors_clean
        assert s.relative_change > 0
    assert probe.errors_before > 0  # the unedited model disagrees with the edited board
    assert "err before" in board.format_table(result)
    assert result.to_dict()["config"]["cases"] == 40
    none = board.score_method("none", model, 1, torch.from_numpy(
        othello.random_games(8, board.TEST_SEED).tokens()[:, :59]),
        board.find_cases(othello.random_games(8, board.TEST_SEED), 40, 0), None, 0.0, 64)
    assert none.errors_after == pytest.approx(none.errors_before)
