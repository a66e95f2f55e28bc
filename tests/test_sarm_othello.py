"""The Othello search engine against the vectorised engine, and the preference pairs."""

from __future__ import annotations

import numpy as np

from saelab.boardgame import othello
from saelab.boardgame import othello_search as search
from saelab.sarm.othello import engine_agreement, preference_pairs


def test_search_engine_matches_the_vectorised_engine() -> None:
    games = othello.random_games(20, seed=11)
    for g in range(20):
        for t in range(0, 58):
            if games.moves[g, t + 1] < 0:
                break
            nb = bool(games.next_black[g, t])
            black, white = int(games.black[g, t]), int(games.white[g, t])
            mine, theirs = (black, white) if nb else (white, black)
            assert search.legal(mine, theirs) == int(games.next_legal[g, t])
            new_mine, new_theirs = search.play(mine, theirs, int(games.moves[g, t + 1]))
            after = (new_mine, new_theirs) if nb else (new_theirs, new_mine)
            assert after == (int(games.black[g, t + 1]), int(games.white[g, t + 1]))


def test_move_value_depth_one_is_the_evaluation_after_the_move() -> None:
    black, white = othello.start_position(1)
    mine, theirs = int(black[0]), int(white[0])
    d3 = othello.parse_square("d3")
    # after d3 black has 4 discs, white 1; black's mobility 3, white's 3 -> E(white) = -3
    assert search.move_value(mine, theirs, d3, 1) == 3.0
    new_mine, new_theirs = search.play(mine, theirs, d3)
    assert search.move_value(mine, theirs, d3, 2) == -max(
        search.move_value(new_theirs, new_mine, s, 1)
        for s in search.squares(search.legal(new_theirs, new_mine)))


def test_preference_pairs_are_legal_ordered_and_seeded() -> None:
    pairs = preference_pairs(15, seed=3, depth=1)
    again = preference_pairs(15, seed=3, depth=1)
    assert np.array_equal(pairs.chosen, again.chosen)
    assert (pairs.value_chosen >= pairs.value_rejected + 1.0).all()
    assert (pairs.chosen != pairs.rejected).all()
    for side in ("chosen", "rejected"):
        ids = getattr(pairs.tokens, f"{side}_ids")
        mask = getattr(pairs.tokens, f"{side}_mask")
        for row, m in zip(ids, mask, strict=True):
            squares = othello.tokens_to_squares(row[m.bool()].numpy())
            othello.replay([squares.tolist()])  # raises on an illegal move
    assert engine_agreement(pairs, 1) == 1.0  # the labels' own search agrees with itself
