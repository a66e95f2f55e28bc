"""``saelab boardgame`` actions end to end on a tiny random model, and the demo pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import saelab
from saelab.boardgame import lm
from saelab.cli import boardgame_cmd

pytest.importorskip("transformers")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="saelab", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    boardgame_cmd.add_parser(sub)
    args, extra = parser.parse_known_args(argv)
    return int(args.run(args, extra, parser))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = lm.LMTrainConfig(game="othello", n_layer=2, d_model=16, n_head=2)
    folder = tmp_path_factory.mktemp("model")
    lm.save_model(lm.build_model(cfg), folder, {"game": "othello", "command": "test",
                                                 "settings": {}})
    return folder


def test_activations_then_eval(tiny_model: Path, tmp_path: Path, capsys) -> None:
    acts = tmp_path / "acts.npy"
    assert _cli(["boardgame", "activations", str(tiny_model), "--layer", "1", "--games", "5",
                 "--out", str(acts)]) == 0
    array = np.load(acts)
    assert array.shape == (5 * 59, 16) and array.dtype == np.float32
    for name in ("a", "b"):
        sae = saelab.build(saelab.config_from_dict(
            {"architecture": "topk", "k": 3, "d_in": 16, "d_sae": 32}))
        saelab.save(sae, tmp_path / "saes" / name)
    out = tmp_path / "eval.json"
    assert _cli(["boardgame", "eval", "--sae-dir", str(tmp_path / "saes"), "--game", "othello",
                 "--model", str(tiny_model), "--layer", "1", "--train-games", "6",
                 "--test-games", "6", "--probe-steps", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["name"] for s in result["saes"]] == ["a", "b"]
    assert out.with_suffix(".png").exists()
    printed = capsys.readouterr()
    assert "linear probe" in printed.out
    assert "  dead: " in printed.out and "\nConclusion: On board" in printed.out
    assert set(result["report"]) == {"saes", "columns", "warnings", "conclusion"}
    assert "scoring SAEs: 2/2" in printed.err  # progress lines go to stderr


def test_eval_without_saes_says_how_to_fix(tiny_model: Path) -> None:
    with pytest.raises(saelab.config.ConfigError, match="--sae-dir"):
        _cli(["boardgame", "eval", "--model", str(tiny_model)])


def test_demo_pipeline_writes_a_report(tiny_model: Path, tmp_path: Path) -> None:
    from saelab.pipelines.boardgame_demo import OthelloDemoConfig, demo_summary, run_othello_demo

    cfg = OthelloDemoConfig(model=str(tiny_model), sae_games=20, eval_games=8,
                            total_tokens=2048, batch_size=256, expansion=2, k=4, threads=1,
                            feature_board_games=20)
    results = run_othello_demo(tmp_path, cfg, verbose=False)
    assert set(results) == {"trained", "random-init"}
    summary = demo_summary(results)
    assert set(summary["trained"]) == {"topk", "panneal"}
    for name in ("report.md", "report.html", "results.json", "comparison.png"):
        assert (tmp_path / name).exists()
    report = (tmp_path / "report.md").read_text()
    assert "linear probe" in report
    for section in ("**Conclusion.** On board", "## Warnings", "## SAEs", "## Columns"):
        assert section in report
    assert "| trained | topk | topk | 32 | k=4 | 2,048 |" in report
    # Activations went through a real activation cache: every (game, position) exactly once.
    from saelab.cache import CacheSource

    cache = CacheSource(tmp_path / "cache_trained_layer1")
    assert cache.d_in == 16
    positions = cache.positions(np.arange(cache.n_rows))
    assert len({tuple(p) for p in positions.tolist()}) == len(positions) == 20 * 59
    # The demo ends with the TopK SAE's feature store, bound to those weights.
    from saelab.features import FeatureStore
    from saelab.io import load
    from saelab.pipelines.boardgame_demo import demo_sae_dir

    store = FeatureStore(demo_sae_dir(tmp_path), load(demo_sae_dir(tmp_path)))
    assert store.meta["n_rows"] == 20 * 59 and store.meta["model"]["kind"] == "game"
    labelled = [lab for m in range(store.n_latents) for lab in store.labels(m)]
    assert labelled and all(lab["source"] == "boardgame" and 0 <= lab["score"] <= 1
                            for lab in labelled)
    assert store.examples(0)["top"][0]["tokens"][0].strip() in {  # moves shown as squares
        f"{f}{r}" for f in "abcdefgh" for r in range(1, 9)}
