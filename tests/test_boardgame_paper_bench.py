"""benchmarks/boardgame_paper.py on a tiny run: each (model, seed) result is written as it
finishes, a rerun skips the finished ones (resume), and a rerun with other options refuses;
per-kind sweeps reach their kind's jobs; ``--calibrate-l0`` finds each penalty coefficient on
real Othello activations, is saved and reused, and a changed calibration is refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import load_benchmark


def _bench() -> ModuleType:
    return load_benchmark("boardgame_paper")


def _args(out: Path, tokens: int = 512) -> list[str]:
    return ["--model", "othello", "--seeds", "0", "--train-games", "3", "--test-games", "3",
            "--sae-games", "6", "--tokens", str(tokens), "--batch-size", "128", "--out", str(out),
            "--sweep", "topk=4", "--sweep", "random-init:relu=2", "--sweep", "relu=1",
            "--sweep", "panneal=1", "--sweep", "gated=1"]


def _trained_args(out: Path, seeds: list[str]) -> list[str]:
    """``_args`` for the trained model's jobs alone, with these seeds."""
    args = _args(out)
    args[args.index("--seeds") + 1:args.index("--seeds") + 2] = [*seeds, "--kind", "trained"]
    return args


def test_results_are_written_per_job_and_a_rerun_resumes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    bench = _bench()
    out = tmp_path / "run"
    assert bench.main(_args(out)) == 0
    first = json.loads((out / "results.json").read_text())
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert jobs == ["random-init_seed0.json", "trained_seed0.json"]
    trained = json.loads((out / "jobs" / "trained_seed0.json").read_text())
    assert {p["architecture"] for p in trained["points"]} == {"topk", "relu", "panneal", "gated"}
    assert set(trained["result"]["saes"][0]["scores"]) == {"board"}  # only what is compared
    # the kind-prefixed sweep reaches only its kind's job (whatever the order given), and
    # each job records the sweep values it trained
    control = json.loads((out / "jobs" / "random-init_seed0.json").read_text())
    assert trained["sweeps"] == {"topk": [4], "relu": [1], "panneal": [1], "gated": [1]}
    assert control["sweeps"] == {"topk": [4], "relu": [2], "panneal": [1], "gated": [1]}
    assert {p["name"] for p in trained["points"]} == {"topk@4", "relu@1", "panneal@1", "gated@1"}
    assert {p["name"] for p in control["points"]} == {"topk@4", "relu@2", "panneal@1", "gated@1"}

    # drop one job: the rerun trains only that one and gives the same comparison
    (out / "jobs" / "random-init_seed0.json").unlink()
    trained_kinds: list[str] = []
    real_train = bench.train_saes

    def counting(acts_path: Path, *a: Any, **kw: Any) -> Any:
        trained_kinds.append(acts_path.name)
        return real_train(acts_path, *a, **kw)

    monkeypatch.setattr(bench, "train_saes", counting)
    assert bench.main(_args(out)) == 0
    assert trained_kinds == ["acts_random-init.npy"]
    again = json.loads((out / "results.json").read_text())
    assert again["table"] == first["table"]
    assert "done earlier" in capsys.readouterr().err

    # other options in the same folder: refused, nothing replaced
    before = (out / "jobs" / "trained_seed0.json").read_bytes()
    assert bench.main(_args(out, tokens=1024)) == 2
    assert "holds a different paper-comparison run" in capsys.readouterr().err
    assert (out / "jobs" / "trained_seed0.json").read_bytes() == before

    # a job trained with other sweep values than the run now gives its kind: refused
    changed = json.loads(before)
    changed["sweeps"]["relu"] = [2]
    (out / "jobs" / "trained_seed0.json").write_text(json.dumps(changed))
    assert bench.main(_args(out)) == 2
    assert "was trained with the sweeps" in capsys.readouterr().err


def test_sweeps_per_kind_are_parsed_and_bad_ones_refused() -> None:
    bench = _bench()
    sweeps = bench.parse_sweeps(["random-init:relu=4", "trained:gated=3,5", "relu=1,2"])
    assert sweeps["trained"]["relu"] == (1, 2) and sweeps["random-init"]["relu"] == (4,)
    assert sweeps["trained"]["gated"] == (3, 5)
    assert sweeps["random-init"]["gated"] == bench.SWEEPS["gated"]
    for bad in ["chess:relu=1", "relu", "relu=a", "jumprelu=1"]:
        with pytest.raises(bench.ConfigError, match="--sweep"):
            bench.parse_sweeps([bad])


def test_rescore_scores_saved_saes_again_and_other_weights_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    out = tmp_path / "run"
    args = _trained_args(out, ["0"])
    assert bench.main(args) == 0
    path = out / "jobs" / "trained_seed0.json"
    new = json.loads(path.read_text())
    assert new["scoring_version"] == bench.SCORING_VERSION
    probe = new["result"]["probe"]["board"]  # the linear ceiling comes with every job
    assert 0 < probe["reconstruction_f1_as_latents"] <= 1
    assert "Linear ceiling" in json.loads((out / "results.json").read_text())["table"]

    # an old job (scoring version 1, no diagnostics): --rescore scores its saved SAEs again,
    # trains nothing, keeps the old file, and reproduces every number the old job had
    old = json.loads(path.read_text())
    del old["scoring_version"], old["model_sha256"]
    for point in old["points"]:
        del point["reconstruction_recall_test"]
    path.write_text(json.dumps(old))
    monkeypatch.setattr(bench, "train_saes", lambda *a, **k: pytest.fail("retrained"))
    assert bench.main(args) == 0  # without --rescore: read as it is
    assert json.loads(path.read_text()) == old
    assert bench.main([*args, "--rescore"]) == 0
    assert "re-scoring 4 saved SAEs" in capsys.readouterr().err
    assert json.loads(path.with_name("trained_seed0.before-rescore.json").read_text()) == old
    rescored = json.loads(path.read_text())
    assert rescored["points"] == new["points"]
    assert rescored["scoring_version"] == bench.SCORING_VERSION

    # a job made with other weights than --model's: refused, nothing replaced
    rescored["model_sha256"] = "0" * 64
    path.write_text(json.dumps(rescored))
    assert bench.main(args) == 2
    assert "made with a game LM whose weights" in capsys.readouterr().err
    assert json.loads(path.read_text()) == rescored


def test_calibration_matches_l0_on_real_activations_and_is_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from saelab.boardgame import lm
    from saelab.boardgame.activations import game_activations, write_npy
    from saelab.evals.concept_data import sae_l0
    from saelab.io import load

    bench = _bench()
    model, game = lm.load_game_lm("othello")
    acts = write_npy(tmp_path / "acts.npy", game_activations(model, game, 2, 40, 1))
    eval_acts = torch.from_numpy(game_activations(model, game, 2, 20, 2))
    out = tmp_path / "run"
    argv = ["--out", str(out), "--tokens", "8192", "--batch-size", "64", "--expansion", "1",
            "--target-l0", "32", "--calibration-rounds", "4", "--calibration-tolerance", "0.15"]
    args = bench.build_parser().parse_args(argv)
    record = bench.calibrate(args, "trained", acts, eval_acts, "sha", 0.0)
    saved = json.loads((out / "calibration_trained.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert set(record["matches"]) == {"relu", "panneal", "gated"}
    for arch, m in record["matches"].items():
        # measured here: every one lands within 15% of 32 after one secant step
        assert m["matched"] and abs(m["l0"] - 32) <= 0.15 * 32, (arch, m["history"])
        assert len(m["history"]) >= 2  # the start value (relu 3 ...) was not already there
        # its L0, measured again from the SAE the calibration saved, is the one recorded
        round_index = [v for v, _ in m["history"]].index(m["value"])
        sae = load(out / "calibration_trained" / f"round{round_index}" / "final" / arch)
        assert abs(sae_l0(sae, eval_acts) - m["l0"]) < 1e-6
        # the sweep holds the coefficient found and brackets it on both sides
        sweep = record["sweeps"][arch]
        assert float(f"{m['value']:.3g}") in sweep and min(sweep) < m["value"] < max(sweep)

    # a rerun with the same inputs reuses the file and trains nothing
    monkeypatch.setattr(bench, "train_saes", lambda *a, **k: pytest.fail("calibrated again"))
    assert bench.calibrate(args, "trained", acts, eval_acts, "sha", 0.0) == saved
    # other inputs (another target L0, or other weights): refused, the file kept
    other = bench.build_parser().parse_args([*argv, "--target-l0", "16"])
    for a, sha in ((other, "sha"), (args, "other-weights")):
        with pytest.raises(bench.ConfigError, match="calibrated with other inputs"):
            bench.calibrate(a, "trained", acts, eval_acts, sha, 0.0)
    assert json.loads((out / "calibration_trained.json").read_text()) == saved


def test_calibrated_run_records_its_sweep_and_a_changed_calibration_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    out = tmp_path / "run"
    # TopK's sweep given, the penalty ones calibrated
    args = [*_args(out)[:_args(out).index("--sweep") + 2], "--kind", "trained",
            "--calibrate-l0", "--calibration-rounds", "1"]
    assert args.count("--sweep") == 1
    assert bench.main(args) == 0
    calibration = json.loads((out / "calibration_trained.json").read_text())
    job = json.loads((out / "jobs" / "trained_seed0.json").read_text())
    assert job["sweeps"] == {"topk": [4], **calibration["sweeps"]}
    report = json.loads((out / "results.json").read_text())
    assert report["calibration"]["trained"] == calibration
    assert "Calibration (`--calibrate-l0`" in report["table"]
    # 4 steps cannot move L0 to 16: the calibration says so rather than claim a match
    assert not any(m["matched"] for m in calibration["matches"].values())

    # resume: the saved calibration is reused, nothing trained
    monkeypatch.setattr(bench, "train_saes", lambda *a, **k: pytest.fail("retrained"))
    assert bench.main(args) == 0
    assert "calibration done earlier" in capsys.readouterr().err
    # a calibration that now gives other sweeps than the finished job used: refused
    calibration["sweeps"]["relu"] = [123.0]
    (out / "calibration_trained.json").write_text(json.dumps(calibration))
    assert bench.main(args) == 2
    assert "was trained with the sweeps" in capsys.readouterr().err
    # --sweep for a calibrated architecture: refused before anything runs
    assert bench.main([*args, "--sweep", "relu=2"]) == 2
    assert "--calibrate-l0 sets the sweeps" in capsys.readouterr().err


def test_each_seed_is_calibrated_with_its_own_seed_and_its_job_uses_that_sweep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    out = tmp_path / "run"
    args = [*_args(out)[:_args(out).index("--sweep") + 2], "--kind", "trained",
            "--calibrate-l0", "--calibration-rounds", "1", "--calibrate-each-seed"]
    args[args.index("--seeds") + 1:args.index("--seeds") + 2] = ["0", "1"]
    assert bench.main(args) == 0
    cal = {s: json.loads((out / f"calibration_trained_seed{s}.json").read_text()) for s in (0, 1)}
    assert not (out / "calibration_trained.json").exists()
    assert [cal[s]["inputs"]["seed"] for s in (0, 1)] == [0, 1]
    # the same start coefficients trained with another seed land on other L0s
    assert any(cal[0]["matches"][a]["l0"] != cal[1]["matches"][a]["l0"] for a in cal[0]["matches"])
    for s in (0, 1):
        job = json.loads((out / "jobs" / f"trained_seed{s}.json").read_text())
        assert job["sweeps"] == {"topk": [4], **cal[s]["sweeps"]}
    report = json.loads((out / "results.json").read_text())
    assert set(report["calibration"]) == {"trained_seed0", "trained_seed1"}
    assert "each seed its own" in report["table"] and "| trained, seed 1 |" in report["table"]
    # without --calibrate-l0 the option has nothing to calibrate: refused
    plain = [a for a in args if a != "--calibrate-l0"]
    assert bench.main(plain) == 2
    assert "add --calibrate-l0" in capsys.readouterr().err


def test_rescore_then_a_new_job_of_the_same_kind_gets_its_activations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One process re-scores seed 0's old job (which needs no SAE-training activations) and
    then trains seed 1 of the same kind, whose activations are not on disk (a user cleared the
    large ``acts_*.npy`` cache): they are written for it, and the evaluation games are
    collected once."""
    bench = _bench()
    out = tmp_path / "run"
    args = _trained_args(out, ["0"])
    assert bench.main(args) == 0
    path = out / "jobs" / "trained_seed0.json"
    old = json.loads(path.read_text())
    old["scoring_version"] = 1
    path.write_text(json.dumps(old))
    (out / "acts_trained.npy").unlink()

    collected: list[int] = []
    real_collect = bench.board_eval.collect_board_data

    def counting(*a: Any, **kw: Any) -> Any:
        collected.append(1)
        return real_collect(*a, **kw)

    monkeypatch.setattr(bench.board_eval, "collect_board_data", counting)
    assert bench.main([*_trained_args(out, ["0", "1"]), "--rescore"]) == 0
    err = capsys.readouterr().err
    assert "re-scoring 4 saved SAEs" in err and "trained seed 1: training 4 SAEs" in err
    assert json.loads(path.read_text())["scoring_version"] == bench.SCORING_VERSION
    assert (out / "jobs" / "trained_seed1.json").exists()
    assert (out / "acts_trained.npy").exists()
    assert len(collected) == 1
