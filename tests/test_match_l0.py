"""Matched-L0 search (saelab.search.match_l0): the knob search on known L0 curves, and one real
training run that must land inside the tolerance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saelab.config import ConfigError
from saelab.search.match_l0 import KNOBS, Knob, match_l0, propose, values_for_l0s


class Fake:
    """Stands in for a trained SAE: remembers the config it was 'trained' with."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def run(curve: Any, configs: dict[str, dict[str, Any]], target: float, **kw: Any) -> Any:
    rounds: list[dict[str, dict[str, Any]]] = []

    def train_round(i: int, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        assert i == len(rounds)
        rounds.append(settings)
        return {n: Fake(c) for n, c in settings.items()}

    result = match_l0(configs, train_round, lambda sae: curve(sae.config), target,
                      progress=False, **kw)
    return result, rounds


def test_secant_is_exact_on_a_power_law() -> None:
    # L0 = 100 / c: (1, 100) and (10, 10) bracket 20, which sits at c = 5
    assert propose(KNOBS["relu"], [(1.0, 100.0), (10.0, 10.0)], 20.0) == pytest.approx(5.0)


def test_first_step_follows_the_knob_direction() -> None:
    # one point, L0 too high: a penalty coefficient must grow, k must shrink
    assert propose(KNOBS["relu"], [(2.0, 40.0)], 10.0) == pytest.approx(8.0)
    assert propose(KNOBS["topk"], [(40.0, 40.0)], 10.0) == 10.0


def test_a_flat_response_never_retrains_a_tried_value() -> None:
    # L0 does not move with the coefficient (a run too short to train): every round must try
    # a new value, further out, instead of repeating the 16x step already taken
    result, rounds = run(lambda c: 250.0, {"relu": {"architecture": "relu",
                                                    "l1_coefficient": 3.0}}, 16.0)
    tried = [r["relu"]["l1_coefficient"] for r in rounds]
    assert len(tried) == 5 and len(set(tried)) == 5 and tried == sorted(tried)
    assert not result["relu"].matched


def test_values_for_l0s_reuse_a_matched_value_and_place_the_others_on_the_secant() -> None:
    # L0 = 100 / c measured at c = 1, 10 and 6.25 (L0 16): the sweep for 8/16/32 is 12.5 (the
    # power law), 6.25 (the tried value within tolerance) and 3.125 (inside the 1..6.25 bracket)
    history = [(1.0, 100.0), (10.0, 10.0), (6.25, 16.0)]
    values = values_for_l0s(KNOBS["relu"], history, [8.0, 16.0, 32.0], 0.1)
    assert values == pytest.approx([12.5, 6.25, 3.125])


def test_penalty_coefficient_converges_to_the_target() -> None:
    def curve(c: dict[str, Any]) -> float:
        return 300.0 / c["l1_coefficient"] ** 0.6

    result, rounds = run(curve, {"relu": {"architecture": "relu", "l1_coefficient": 1.0}}, 16.0)
    m = result["relu"]
    assert m.matched and abs(m.l0 - 16.0) <= 1.6
    assert m.l0 == pytest.approx(curve({"l1_coefficient": m.value}))
    assert len(rounds) <= 5 and len(m.history) == len(rounds)


def test_matched_names_stop_training_and_others_go_on() -> None:
    def curve(c: dict[str, Any]) -> float:
        return 0.8 * c["k"] if c["architecture"] == "batchtopk" else float(c["k"])

    configs = {"topk": {"architecture": "topk", "k": 16},
               "batchtopk": {"architecture": "batchtopk", "k": 16}}
    result, rounds = run(curve, configs, 16.0)
    assert set(rounds[0]) == {"topk", "batchtopk"}
    assert all("topk" not in r for r in rounds[1:])  # matched in round 1: not retrained
    assert result["topk"].matched and result["topk"].value == 16
    assert result["batchtopk"].matched and result["batchtopk"].value == 20  # 0.8·20 = 16


def test_integer_knob_between_neighbours_is_reported_unmatched() -> None:
    # L0 = 10·k: 15 lies between k = 1 and k = 2, neither within 10%
    result, rounds = run(lambda c: 10.0 * c["k"], {"t": {"architecture": "topk", "k": 1}}, 15.0)
    m = result["t"]
    assert not m.matched and m.value in (1, 2) and len(rounds) == 2
    assert abs(m.relative_error) == pytest.approx(1 / 3)


def test_unreachable_target_is_reported_unmatched_after_the_rounds() -> None:
    result, rounds = run(lambda c: 50.0, {"j": {"architecture": "jumprelu",
                                                "l0_coefficient": 1.0}}, 10.0, max_rounds=3)
    assert len(rounds) == 3 and not result["j"].matched and result["j"].l0 == 50.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="no L0 knob"):
        run(lambda c: 1.0, {"x": {"architecture": "crosscoder"}}, 10.0)
    with pytest.raises(ConfigError, match="target"):
        run(lambda c: 1.0, {"x": {"architecture": "topk"}}, 0.0)
    assert isinstance(KNOBS["jumprelu"], Knob) and not KNOBS["jumprelu"].raises_l0


def test_real_relu_sae_is_matched(tmp_path: Path) -> None:
    from saelab.boardgame.activations import write_npy
    from saelab.evals.concept_data import sae_l0
    from saelab.pipelines.boardgame_demo import train_saes
    from saelab.registry import config_from_dict

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # sparse sums of 64 random directions in 16 dims
    dirs = rng.standard_normal((64, 16)).astype(np.float32)
    codes = (rng.random((4096, 64)) < 0.05) * rng.random((4096, 64))
    acts = (codes @ dirs).astype(np.float32)
    path = write_npy(tmp_path / "acts.npy", acts)
    eval_acts = torch.from_numpy(acts[:1024])

    def train_round(i: int, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return train_saes(path, {n: config_from_dict(dict(c)) for n, c in settings.items()},
                          tmp_path / f"r{i}", 32768, 256, 3e-3)

    result = match_l0({"relu": {"architecture": "relu", "expansion": 2, "l1_coefficient": 1.0}},
                      train_round, lambda sae: sae_l0(sae, eval_acts), 6.0, 0.15, 5, False)
    m = result["relu"]
    assert m.matched, m.history
    assert m.sae is not None and math.isclose(sae_l0(m.sae, eval_acts), m.l0)


def test_knob_override_searches_the_given_option() -> None:
    # L0 falls with the initial threshold and ignores the coefficient (JumpReLU in short runs)
    def curve(c: dict[str, Any]) -> float:
        return 60.0 * math.exp(-2.0 * c["threshold_init"])

    configs = {"jr": {"architecture": "jumprelu", "l0_coefficient": 30.0, "threshold_init": 0.1}}
    # an exponential is far from the power law the steps assume: it takes six rounds
    result, rounds = run(curve, configs, 8.0, max_rounds=6,
                         knobs={"jr": Knob("threshold_init", raises_l0=False)})
    m = result["jr"]
    assert m.key == "threshold_init" and m.matched, m.history
    assert all(r["jr"]["l0_coefficient"] == 30.0 for r in rounds)
