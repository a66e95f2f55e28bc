"""Stage progress lines: rate and ETA count the reported work only."""

import time

import pytest

from saelab.training.logging import StageProgress


def test_counter_rate_counts_from_report_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """The rate of a counter handed out before other work counts from report(0, total)."""
    report = StageProgress("t").counter("labelling", "positions", interval=0.0)
    time.sleep(0.5)  # work done before the counted work starts
    report(0, 100)
    report(100, 100)
    line = capsys.readouterr().err
    rate = float(line.split("(")[1].split(" positions/s")[0].replace(",", ""))
    assert rate > 1000, line  # 100 positions in ~0 s, not 100 in 0.5 s (200/s)


def test_slow_items_show_seconds_each(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Below one item a second the line gives seconds per item (it used to print 0.0 SAEs/s)."""
    clock = iter([0.0, 0.0, 40.0, 40.0])  # created, counter made, report, say
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    report = StageProgress("t").counter("scoring", "SAEs", interval=0.0)
    report(2, 16)
    line = capsys.readouterr().err
    assert "(20.0 s each, ETA 280 s)" in line, line
