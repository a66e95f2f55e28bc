"""benchmarks/boardgame_paper.py on a tiny run: each (model, seed) result is written as it
finishes, a rerun skips the finished ones (resume), and a rerun with other options refuses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "boardgame_paper.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("boardgame_paper_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(out: Path, tokens: int = 512) -> list[str]:
    return ["--model", "othello", "--seeds", "0", "--train-games", "3", "--test-games", "3",
            "--sae-games", "6", "--tokens", str(tokens), "--batch-size", "128", "--out", str(out),
            "--sweep", "topk=4", "--sweep", "relu=1", "--sweep", "panneal=1",
            "--sweep", "gated=1"]


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


def test_rescore_scores_saved_saes_again_and_other_weights_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    out = tmp_path / "run"
    args = _args(out)
    args[args.index("--seeds") + 1:args.index("--seeds") + 2] = ["0", "--kind", "trained"]
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
