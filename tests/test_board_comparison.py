"""The paper-style comparison: best of sweep (each maximum over the sweep), matched L0
(nearest on a log scale, flagged when off), mean ± 95% interval over seeds, and the paper's findings."""

from __future__ import annotations

import dataclasses
import math

import pytest

from saelab.evals.board_comparison import (
    ComparisonConfig,
    SweepPoint,
    compare,
    format_table,
    matched_contrasts,
    sweep_points,
)
from saelab.evals.boardgame import GroupScores, SAEBoardResult


def _point(kind: str, seed: int, arch: str, l0: float, cov_paper: float, rec_paper: float,
           cov_test: float = 0.3, rec_test: float = 0.3) -> SweepPoint:
    return SweepPoint(kind, seed, arch, f"{arch}@{l0:g}", f"x={l0:g}", l0, 0.8, 0, cov_paper,
                      rec_paper, cov_test, rec_test, cov_paper)


def _sweep(kind: str, arch: str, cov: float, rec: float, seeds: tuple[int, ...] = (0, 1)
           ) -> list[SweepPoint]:
    out = []
    for seed in seeds:
        for l0, scale in ((4.0, 0.5), (15.0, 0.9), (60.0, 1.0)):
            out.append(_point(kind, seed, arch, l0, cov * scale + 0.01 * seed,
                              rec * (1.5 - scale), cov_test=scale, rec_test=l0 / 100))
    return out


def test_best_of_sweep_and_matched_l0() -> None:
    points = _sweep("trained", "topk", 0.8, 0.6) + _sweep("random-init", "topk", 0.3, 0.3)
    cmp = compare(points, "othello", ComparisonConfig(target_l0=16))
    row = cmp.row("trained", "topk")
    assert row is not None and row.n_seeds == 2
    assert row.best_coverage_paper.values == pytest.approx([0.8, 0.81])  # the L0-60 point
    assert row.best_reconstruction_paper.values == pytest.approx([0.6, 0.6])  # the L0-4 point
    assert row.matched_l0.mean == 15.0 and row.matched  # 15 is nearest 16, within 1.25×
    assert row.matched_coverage_test.mean == pytest.approx(0.9)
    assert row.best_coverage_paper.ci95 == pytest.approx(12.706 * 0.00707 / 2**0.5, rel=1e-3)
    assert row.paper_coverage == 0.77
    control = cmp.row("random-init", "topk")
    assert control is not None and control.paper_coverage == 0.43
    far = compare(points, "othello", ComparisonConfig(target_l0=30)).row("trained", "topk")
    assert far is not None and not far.matched  # 15 or 60 are both more than 1.25× from 30


def test_findings_follow_the_numbers() -> None:
    paper_like = (_sweep("trained", "topk", 0.77, 0.91) + _sweep("trained", "gated", 0.76, 0.91)
                  + _sweep("trained", "panneal", 0.64, 0.95)
                  + _sweep("trained", "relu", 0.56, 0.95)
                  + _sweep("random-init", "topk", 0.43, 0.43))
    findings = compare(paper_like, "othello", ComparisonConfig()).findings
    assert [f.reproduces for f in findings] == [True, True, True, True, True]
    reversed_order = (_sweep("trained", "topk", 0.40, 0.99) + _sweep("trained", "gated", 0.5, 0.9)
                      + _sweep("trained", "panneal", 0.64, 0.5)
                      + _sweep("trained", "relu", 0.70, 0.5)
                      + _sweep("random-init", "topk", 0.45, 0.43))
    cmp = compare(reversed_order, "othello", ComparisonConfig())
    assert [f.reproduces for f in cmp.findings] == [False, True, False, False, False]
    table = format_table(cmp)
    assert "| trained | TopK | 2 | 0.77 |" in table and "| no |" in table
    # above the control on average but inside its seed interval: not "above"
    noisy = [dataclasses.replace(p, reconstruction_paper=p.reconstruction_paper + 0.05 * p.seed)
             for p in _sweep("random-init", "topk", 0.43, 0.88)]
    close = compare([p for p in paper_like if p.kind == "trained"] + noisy, "othello",
                    ComparisonConfig()).findings[1]
    assert "reconstruction" in close.claim and not close.reproduces
    assert compare([p for p in paper_like if p.kind == "trained"]
                   + _sweep("random-init", "topk", 0.43, 0.45), "othello",
                   ComparisonConfig()).findings[1].reproduces


def test_a_group_compares_coverage_only_and_chess_gets_no_othello_orderings() -> None:
    group = GroupScores("strategy", ["check", "pin"], 0.3, 0.25, 0.2, 0.15)
    sae = SAEBoardResult("topk@8", 64, 60, 8.0, 0.7, {}, {"strategy": group}, "TopK", "k=8")
    result = type("R", (), {"saes": [sae]})()
    point = sweep_points(result, "trained", 0, "strategy", {"topk@8": "topk"})[0]  # type: ignore[arg-type]
    assert (point.coverage_paper, point.coverage_test, point.coverage_train) == (0.2, 0.25, 0.3)
    assert point.reconstruction_paper != point.reconstruction_paper  # NaN: a group has none
    with pytest.raises(KeyError, match="neither a property nor a group"):
        sweep_points(result, "trained", 0, "piece", {})  # type: ignore[arg-type]
    points = [dataclasses.replace(p, architecture=a, kind=k) for a in
              ("topk", "gated", "panneal", "relu") for k in ("trained", "random-init")
              for p in _sweep(k, a, 0.5, 0.5)]
    nan_rec = [dataclasses.replace(p, reconstruction_paper=math.nan) for p in points]
    strategy = compare(nan_rec, "chess", ComparisonConfig(headline_property="strategy"))
    chess = strategy.findings
    assert [f.claim.split("'s ")[1][:8] for f in chess] == ["coverage"]  # no recon, no ordering
    # the paper's chess numbers are for piece_no_initial, not for the strategy average
    assert chess[0].paper == "n/a" and strategy.row("trained", "panneal").paper_coverage is None
    pieces = compare(points, "chess", ComparisonConfig(headline_property="piece_no_initial"))
    assert pieces.row("trained", "panneal").paper_coverage == 0.54
    assert len(compare(points, "othello", ComparisonConfig()).findings) == 5


def test_matched_contrasts_compare_each_architecture_with_its_own_control() -> None:
    # trained TopK's held-out coverage at the L0-15 point is 0.9 on every seed; the control's
    # is set per case (plus spread x seed); reconstruction is l0 / 100 on both: never apart
    seeds = (0, 1, 2)
    trained = _sweep("trained", "topk", 0.8, 0.6, seeds)

    def contrasts(cov: float, spread: float = 0.01, l0: float = 15.0) -> list:
        control = [dataclasses.replace(p, l0=l0 if p.l0 == 15.0 else p.l0,
                                       coverage_test=cov + spread * p.seed)
                   for p in _sweep("random-init", "topk", 0.3, 0.3, seeds)]
        return matched_contrasts(compare(trained + control, "othello", ComparisonConfig()))

    cov, rec = contrasts(0.5)
    assert "coverage" in cov.claim and cov.reproduces  # 0.51±0.025 vs 0.9: apart
    assert "reconstruction" in rec.claim and not rec.reproduces  # 0.15 vs 0.15
    assert not contrasts(0.8, spread=0.05)[0].reproduces  # 0.85±0.12: below, not apart
    # the trained side's own interval counts too: 0.7±0.50 vs 0.51±0.025 is not apart
    noisy_trained = [dataclasses.replace(p, coverage_test=p.coverage_test - 0.2 * p.seed)
                     if p.l0 == 15.0 else p for p in trained]
    control = [dataclasses.replace(p, coverage_test=0.5 + 0.01 * p.seed)
               for p in _sweep("random-init", "topk", 0.3, 0.3, seeds)]
    noisy = matched_contrasts(compare(noisy_trained + control, "othello", ComparisonConfig()))
    assert "0.700±" in noisy[0].ours and not noisy[0].reproduces
    unmatched = contrasts(0.5, l0=30.0)[0]  # the control's point nearest 16 is off
    assert not unmatched.reproduces and "not matched" in unmatched.ours
    assert "| TopK: held-out coverage" in format_table(
        compare(trained + _sweep("random-init", "topk", 0.3, 0.3, seeds), "othello",
                ComparisonConfig()))
    table = format_table(compare(trained, "othello", ComparisonConfig()))
    assert "same architecture at matched L0" not in table  # no control: no contrast rows


def test_one_seed_is_never_called_apart() -> None:
    # the same clear gap as above (0.9 vs 0.5 held out, 0.8 vs 0.3 paper-style), one seed each:
    # no interval exists, so neither claim of "95% intervals apart" may read yes
    trained = _sweep("trained", "topk", 0.8, 0.6, (0,))
    control = [dataclasses.replace(p, coverage_test=0.5)
               for p in _sweep("random-init", "topk", 0.3, 0.3, (0,))]
    cmp = compare(trained + control, "othello", ComparisonConfig())
    contrast = matched_contrasts(cmp)[0]
    assert not contrast.reproduces and "one seed" in contrast.ours
    above_control = cmp.findings[0]
    assert not above_control.reproduces and "one seed" in above_control.ours
    two = _sweep("trained", "topk", 0.8, 0.6) + [
        dataclasses.replace(p, coverage_test=0.5) for p in _sweep("random-init", "topk", 0.3, 0.3)]
    assert matched_contrasts(compare(two, "othello", ComparisonConfig()))[0].reproduces
