"""`saelab alignsae train|eval|swap` end to end on the shipped biography model (tiny settings)."""

from __future__ import annotations

import json

import pytest

from saelab.cli import main


def test_train_eval_swap_report_and_rerun(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["alignsae", "train", "--out", str(run), "--layers", "1", "--d-sae", "24",
            "--stage1-epochs", "1", "--stage2-epochs", "1", "--no-progress"]
    assert main(args) == 0
    final = run / "layer1" / "stage2" / "final" / "alignsae" / "cfg.json"
    assert json.loads(final.read_text())["stage"] == 2
    assert main(args) == 0  # a rerun finds everything trained and changes nothing
    other = [*args[:-1], "--seed", "3"]
    assert main(other) == 2
    assert "other settings" in capsys.readouterr().err

    assert main(["alignsae", "swap", str(run), "--alphas", "0", "2", "--max-cases", "30",
                 "--no-progress"]) == 0
    report = (run / "report" / "report.md").read_text()
    assert "| layer | slot acc |" in report and "**Conclusion:**" in report
    assert (run / "report" / "swap.png").stat().st_size > 1000
    results = json.loads((run / "report" / "results.json").read_text())
    swap = results["summary"]["1"]["swap"]
    assert set(swap) == {"alignsae", "baseline"} and set(swap["alignsae"]) == {"0.0", "2.0"}
    assert 0 <= swap["alignsae"]["2.0"] <= 1


def test_eval_of_a_missing_run_names_the_fix(tmp_path, capsys):
    assert main(["alignsae", "eval", str(tmp_path / "nothing")]) == 2
    assert "saelab alignsae train" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--layers", "9"], ["--d-sae", "6"]])
def test_bad_settings_are_refused_before_training(tmp_path, capsys, flag):
    assert main(["alignsae", "train", "--out", str(tmp_path / "r"), *flag]) == 2
    assert capsys.readouterr().err.strip()
