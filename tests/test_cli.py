import json
import subprocess
import sys

import numpy as np
import pytest

from saelab.cli import main


def test_help_of_every_subcommand(capsys):
    for cmd in ["train", "eval", "toy", "demo", "architectures"]:
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"]) if cmd != "train" else (main([cmd, "--help"]), sys.exit(0))
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out.lower()


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    acts = (rng.random((3000, 64)) < 0.1) * rng.random((3000, 64)) @ rng.standard_normal((64, 12))
    np.save(tmp_path / "acts.npy", acts.astype(np.float32))
    code = main(["train", "--data", str(tmp_path / "acts.npy"), "--arch", "topk", "--k", "6",
                 "--d-sae", "64", "--total-tokens", "102400", "--batch-size", "256", "--lr", "3e-3",
                 "--lr-warmup-steps", "20",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    sae_dir = tmp_path / "run" / "final" / "topk"
    assert (sae_dir / "cfg.json").exists()
    code = main(["eval", str(sae_dir), "--data", str(tmp_path / "acts.npy")])
    assert code == 0
    out = capsys.readouterr().out
    assert "explained_variance" in out
    result = json.loads((sae_dir / "eval.json").read_text())
    assert result["metrics"]["l0"] <= 6.0 + 1e-9
    assert 0 < result["metrics"]["explained_variance"] <= 1
    assert (sae_dir / "eval.density.png").stat().st_size > 1000


def test_bad_input_gets_a_one_line_error(tmp_path, capsys):
    np.save(tmp_path / "acts.npy", np.ones((100, 8), dtype=np.float32))
    code = main(["train", "--data", str(tmp_path / "acts.npy"), "--arch", "topk", "--k", "100",
                 "--d-sae", "16", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "k must be in [1, d_sae=16]" in capsys.readouterr().err
    code = main(["eval", str(tmp_path / "nothing"), "--data", str(tmp_path / "acts.npy")])
    assert code == 2
    assert "is not a folder" in capsys.readouterr().err


def test_architectures_lists_options(capsys):
    assert main(["architectures", "jumprelu"]) == 0
    assert "--l0-coefficient" in capsys.readouterr().out


def test_toy_command_writes_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "saelab.cli", "toy", "--archs", "topk,batchtopk",
                           "--steps", "80", "--no-progress", "--out", str(tmp_path)],
                          capture_output=True, text=True, check=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert "| topk |" in proc.stdout
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["name"] for r in rows} == {"topk", "batchtopk"}
