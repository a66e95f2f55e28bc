"""Board-eval reports: the warnings (unmatched L0, broken SAEs, trained below its control),
the conclusion sentence and the column definitions."""

from __future__ import annotations

from saelab.evals import board_report
from saelab.evals.boardgame import (
    BoardEvalConfig,
    BoardEvalResult,
    PropertyScores,
    SAEBoardResult,
)


def _scores(coverage: float, recon: float) -> dict[str, PropertyScores]:
    return {"board": PropertyScores("board", 192, 188, coverage, coverage, 0.3, recon, recon,
                                    0.3, 10, 5, 192, coverage, coverage, recon)}


def _sae(name: str, l0: float = 16.0, ev: float = 0.8, alive: int = 1000, coverage: float = 0.5,
         recon: float = 0.5) -> SAEBoardResult:
    return SAEBoardResult(name, 1024, alive, l0, ev, _scores(coverage, recon),
                          architecture="topk", sparsity="k=16")


def _result(*saes: SAEBoardResult, random_init: bool = False) -> BoardEvalResult:
    return BoardEvalResult("othello", "othello", 2, random_init, 100, 100, list(saes), None,
                           BoardEvalConfig())


def test_l0_warning_only_when_unmatched() -> None:
    assert board_report.l0_warnings(_result(_sae("a", 16.0), _sae("b", 17.5))) == []
    warning = board_report.l0_warnings(_result(_sae("a", 16.0), _sae("b", 8.2)))
    assert len(warning) == 1 and "not matched" in warning[0] and "b 8.2" in warning[0]


def test_broken_sae_warnings() -> None:
    assert board_report.broken_warnings(_sae("ok")) == []
    negative = board_report.broken_warnings(_sae("neg", ev=-0.3))
    assert len(negative) == 1 and "explained variance -0.300 < 0" in negative[0]
    dead = board_report.broken_warnings(_sae("dead", alive=300))
    assert len(dead) == 1 and "mostly dead" in dead[0] and "724 of 1024" in dead[0]
    assert board_report.broken_warnings(_sae("half", alive=600)) == []


def test_trained_below_control_warning() -> None:
    trained = _result(_sae("topk", coverage=0.30, recon=0.6), _sae("relu", coverage=0.5))
    control = _result(_sae("topk", coverage=0.40, recon=0.5), _sae("relu", coverage=0.2),
                      random_init=True)
    warnings = board_report.control_warnings(trained, control)
    assert len(warnings) == 1
    assert warnings[0].startswith("SAE topk") and "coverage board 0.300 < 0.400" in warnings[0]
    assert "reconstruction" not in warnings[0]  # topk reconstructs better than its control
    results = {"trained": trained, "random-init": control}
    assert warnings[0] in board_report.comparison_warnings(results)
    sentence = board_report.conclusion(results)
    assert sentence.startswith("On board, relu has the highest held-out coverage (0.500")
    assert "above the best SAE on the random-init control (0.400)" in sentence


def test_report_text_defines_columns_and_states_a_conclusion() -> None:
    results = {"trained": _result(_sae("a"), _sae("b", l0=4.0, ev=-1.0))}
    text = board_report.format_report(results, {"a": 300_000})
    for column in board_report.SAE_COLUMNS:
        assert f"  {column}: " in text
    assert "  cov <property>: " in text and "  cov* <property>: " in text
    assert "  rec <property>: " in text and "  properties: board" in text
    assert "300,000" in text and "k=16" in text
    assert text.count("WARNING:") == 2  # unmatched L0 and b's negative EV
    assert text.splitlines()[-1].startswith("Conclusion: On board")
    assert "No warnings." in board_report.format_report({"trained": _result(_sae("a"))})
