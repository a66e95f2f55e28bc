"""End to end through the command line: saelab cache -> train --data <cache> -> eval-model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from saelab.cli import main
from saelab.models.tiny import build_tiny_gpt2
from saelab.text import corpus_path

# One subprocess runs the commands one after another through the CLI entry point, so the
# (slow) torch and transformers imports are paid once.
DRIVER = """
import json, sys
from saelab.cli import main
for argv in json.loads(sys.argv[1]):
    print("=== " + argv[0], flush=True)
    code = main(argv)
    if code:
        sys.exit(code)
"""


def run_cli(*commands: list[str | Path]) -> dict[str, str]:
    """Run saelab commands in one fresh process; returns each command's stdout."""
    argvs = [[str(a) for a in cmd] for cmd in commands]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"saelab failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    sections = proc.stdout.split("=== ")[1:]
    return {s.split("\n", 1)[0]: s.split("\n", 1)[1] for s in sections}


def test_cache_train_eval_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_gpt2(tmp_path / "gpt2")
    cache, run = tmp_path / "cache", tmp_path / "run"
    sae_dir = run / "final" / "topk"
    out = run_cli(
        ["cache", "--model", model, "--hook", "transformer.h.1", "--text", corpus_path(),
         "--out", cache, "--context-size", "32", "--max-tokens", "4096",
         "--memory-limit-mb", "16"],
        ["train", "--data", cache, "--arch", "topk", "--k", "4", "--expansion", "2",
         "--total-tokens", "2048", "--batch-size", "256", "--checkpoint-every", "0",
         "--no-progress", "--out", run],
        ["eval-model", sae_dir, "--model", model, "--hook", "transformer.h.1",
         "--text", corpus_path(), "--context-size", "32", "--max-tokens", "512", "--no-plot"])

    info = json.loads(out["cache"])["caches"]["transformer.h.1"]
    assert info["width"] == 32 and info["contexts"] == 128 and 3500 < info["rows"] < 128 * 31
    assert json.loads(out["train"])["saved"]["topk"] == str(sae_dir)
    headline = json.loads(out["eval-model"].strip().splitlines()[-1])
    assert headline["l0"] == pytest.approx(4.0)
    result = json.loads((sae_dir / "eval_model.json").read_text())
    down = result["downstream"]
    assert result["hook"] == "transformer.h.1" and down["n_predictions"] > 400
    assert headline["ce_loss_recovered"] == pytest.approx(down["ce_loss_recovered"])
    assert 0 < result["metrics"]["explained_variance"] <= 1

    assert main(["cache", "--verify", str(cache)]) == 0
    assert "all checksums match" in capsys.readouterr().out
    (cache / "index_00000.npy").write_bytes(b"broken")
    assert main(["cache", "--verify", str(cache)]) == 2
    assert "index_00000.npy" in capsys.readouterr().err
