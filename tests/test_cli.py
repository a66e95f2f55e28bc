import json
import subprocess
import sys

import numpy as np
import pytest

from saelab.cli import main


def _all_commands() -> list[list[str]]:
    """Every subcommand path, nested ones included (e.g. ["boardgame", "train-lm"])."""
    import argparse

    from saelab.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append([*prefix, name])
                    out += walk(sub, [*prefix, name])
        return out

    return walk(build_parser(), [])


def test_help_of_every_subcommand(capsys):
    commands = _all_commands()
    assert ["boardgame", "train-lm"] in commands and ["train"] in commands
    for cmd in commands:
        try:
            code = main([*cmd, "--help"])  # `train --help` prints and returns 0 itself
        except SystemExit as exc:
            code = exc.code
        assert code == 0, cmd
        assert "usage" in capsys.readouterr().out.lower(), cmd


def test_version(capsys):
    import saelab

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert saelab.__version__ in capsys.readouterr().out


def test_architectures_shows_whole_first_sentence(capsys):
    assert main(["architectures"]) == 0
    out = capsys.readouterr().out
    import re

    entries = [" ".join(e.split()) for e in re.split(r"\n(?=\S)", out.strip())]
    for entry in entries:  # each description is a whole paragraph, not a cut first line
        assert entry.endswith("."), entry
    joined = " ".join(out.split())
    assert "θ is an EMA of the smallest selected positive activation per batch" in joined


def test_toy_options_have_help(capsys):
    with pytest.raises(SystemExit):
        main(["toy", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE rows per" in out and "--lr LR Adam learning rate" in out


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


def test_train_warns_about_self_defeating_schedules(tmp_path, capsys):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32))
    code = main(["train", "--data", str(tmp_path / "acts.npy"), "--arch", "topk", "--k", "2",
                 "--d-sae", "16", "--total-tokens", str(64 * 60), "--batch-size", "64",
                 "--lr-warmup-steps", "100", "--init-samples", "128", "--no-progress",
                 "--no-measure-peak", "--out", str(tmp_path / "run")])
    assert code == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("saelab train: warning:")]
    assert any("reads its 256 rows 15 times over" in w for w in warnings), err
    assert any("lr_warmup_steps=100 is longer than the run (60 steps)" in w for w in warnings), err
    assert any("dead_after_tokens=1,000,000 exceeds" in w for w in warnings), err
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["mse_per_element"] > 0 and "mse" in record


def test_eval_accepts_a_cache_folder_and_a_data_key(tmp_path, capsys):
    from safetensors.numpy import save_file

    from saelab.cache import CacheWriter, WriterSettings
    from saelab.io import save
    from saelab.registry import build, config_from_dict

    width, context = 8, 4
    writer = CacheWriter(tmp_path / "cache", WriterSettings(
        width=width, max_rows=64 * context, context_size=context, memory_limit_mb=16))
    rng = np.random.default_rng(0)
    for number in range(4):
        acts = rng.standard_normal((16 * context, width)).astype(np.float32)
        index = np.stack(np.meshgrid(np.arange(16), np.arange(context), indexing="ij"), -1)
        writer.add_batch(number, acts, index.reshape(-1, 2), rng.integers(0, 9, (16, context)))
    writer.finish()
    sae_dir = save(build(config_from_dict({"architecture": "topk", "d_in": width, "d_sae": 16,
                                           "k": 2}).resolved()), tmp_path / "sae")
    assert main(["eval", str(sae_dir), "--data", str(tmp_path / "cache"), "--no-plot"]) == 0
    result = json.loads((sae_dir / "eval.json").read_text())
    assert result["metrics"]["l0"] <= 2
    save_file({"a": rng.standard_normal((50, 3)).astype(np.float32),
               "b": rng.standard_normal((50, width)).astype(np.float32)}, str(tmp_path / "two.safetensors"))
    assert main(["eval", str(sae_dir), "--data", str(tmp_path / "two.safetensors"),
                 "--data-key", "b", "--no-plot", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["data"].endswith("two.safetensors")
