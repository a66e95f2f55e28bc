"""Explanation-score formulas and the answer parsers behind them."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from saelab.interp.examples import Context, synthetic_examples
from saelab.interp.llm import AnswerError, Completion
from saelab.interp.prompts import binary_list_parser, parse_json, simulation_parser
from saelab.metrics.autointerp import auroc, binary_scores, pearson


def test_binary_scores_by_hand() -> None:
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]  # TP 3, FN 1, FP 1, TN 5
    s = binary_scores(truth, pred)
    assert s.accuracy == 0.8 and s.recall == 0.75 and s.precision == 0.75
    assert s.balanced_accuracy == pytest.approx((0.75 + 5 / 6) / 2)
    assert s.f1 == pytest.approx(0.75)
    assert math.isnan(binary_scores([1, 1], [0, 0]).precision)  # never says yes


def test_auroc_equals_pairwise_probability_with_ties() -> None:
    rng = random.Random(0)
    pos = [rng.choice([0.1, 0.2, 0.3, 0.5]) for _ in range(30)]
    neg = [rng.choice([0.0, 0.1, 0.2]) for _ in range(25)]
    brute = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    assert auroc(pos, neg) == pytest.approx(brute / (len(pos) * len(neg)))
    assert auroc([1.0], [0.0]) == 1.0 and auroc([0.0], [1.0]) == 0.0
    assert math.isnan(auroc([], [1.0]))


def test_pearson_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(list(x), list(y)) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))


def test_simulation_expected_digit_from_logprobs() -> None:
    # two lines: "7\n0"; the first digit token's alternatives 7 (p=.5), 10 (p=.25), "x" (p=.25)
    tokens = ["7", "\n", "0"]
    alts = [[("7", math.log(0.5)), ("10", math.log(0.25)), ("x", math.log(0.25))],
            [("\n", 0.0)], [("0", math.log(0.9)), ("1", math.log(0.1))]]
    values = simulation_parser(2)(Completion("7\n0", tokens, alts))
    assert values[0] == pytest.approx((7 * 0.5 + 10 * 0.25) / 0.75)  # renormalised over digits
    assert values[1] == pytest.approx(0.1)
    assert simulation_parser(2)(Completion("3\n10")) == [3.0, 10.0]  # no logprobs: digits
    with pytest.raises(AnswerError, match="expected 3"):
        simulation_parser(3)(Completion("3\n10"))


def test_parsers_reject_malformed_answers() -> None:
    assert binary_list_parser(3)(Completion("Sure: [1, 0, 1]")) == [1, 0, 1]
    for bad in ("[1, 0]", "[1, 2, 0]", "no list", "I'm sorry, I can't."):
        with pytest.raises(AnswerError):
            binary_list_parser(3)(Completion(bad))
    assert parse_json('```json\n{"a": [1]}\n```', dict) == {"a": [1]}
    with pytest.raises(AnswerError):
        parse_json("[1, 2]", dict)


def test_marking_and_simulation_sample() -> None:
    ctx = Context(["The", " big", " cat", " sat"], [0.0, 1.5, 4.0, 1.0])
    assert ctx.marked() == "The <<big cat>> sat"  # 1.5 ≥ 0.3·4, 1.0 is not
    ex = synthetic_examples(0, n=30)
    sample = ex.simulation_sample()
    assert len(sample) == 10
    ranked = sorted(ex.held_out, key=lambda c: -c.max_activation)
    top_third = {id(c) for c in ranked[:10]}
    assert sum(id(c) in top_third for c in sample) == 4
