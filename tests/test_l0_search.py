"""L0 search: the elbow rule, reuse on rerun, and the seed options of train/eval."""

import json

import numpy as np
import pytest

from saelab.cli import main
from saelab.search.l0 import choose_l0


def test_elbow_rule_picks_the_l0_just_before_the_rise():
    ks = [2, 4, 8, 11, 16, 32]
    proxy = [0.9, 0.5, 0.2, 0.05, 0.06, 0.1]
    assert choose_l0(ks, proxy, 0.1) == (11, [])
    # within 10% of the range above the minimum (0.05 + 0.085) the lower L0 wins: the elbow
    assert choose_l0(ks, [0.9, 0.5, 0.13, 0.05, 0.06, 0.1], 0.1)[0] == 8
    assert choose_l0(ks, [0.9, 0.5, 0.14, 0.05, 0.06, 0.1], 0.1)[0] == 11
    assert choose_l0(ks, [0.9, 0.5, 0.14, 0.05, 0.06, 0.1], 0.0)[0] == 11
    # order of the input does not matter
    assert choose_l0(ks[::-1], proxy[::-1], 0.1)[0] == 11


def test_elbow_rule_warns_at_the_ends_of_the_grid():
    chosen, warnings = choose_l0([4, 8, 16], [0.1, 0.2, 0.3], 0.1)
    assert chosen == 4 and "extend --l0s downwards" in warnings[0]
    chosen, warnings = choose_l0([4, 8, 16], [0.3, 0.2, 0.1], 0.1)
    assert chosen == 16 and any("extend --l0s upwards" in w for w in warnings)


SEARCH = ["l0-search", "--toy", "chanin_small", "--seeds", "2", "--d-sae", "5",
          "--total-tokens", "12800", "--batch-size", "256", "--eval-rows", "2048",
          "--init-samples", "1024", "--no-progress", "--no-measure-peak", "--lr", "3e-3"]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_l0_search_reuses_trained_saes_on_rerun(tmp_path, capsys):
    out = tmp_path / "search"
    assert main([*SEARCH, "--l0s", "1", "2", "3", "--out", str(out)]) == 0
    first = _last_json(capsys.readouterr().out)
    assert first["trained"] == 6 and first["reused"] == 0
    report = json.loads((out / "report.json").read_text())
    assert [p["k"] for p in report["curve"]] == [1, 2, 3]
    assert {"c_dec", "s_n_dec", "mse", "l0"} <= set(report["curve"][0]["summary"])
    assert report["curve"][0]["summary"]["c_dec"]["n"] == 2
    assert (out / "curve.png").stat().st_size > 1000 and "Chosen L0" in (out / "report.md").read_text()
    weights = out / "saes" / "l0_2_seed1" / "sae.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert main([*SEARCH, "--l0s", "1", "2", "3", "--out", str(out)]) == 0
    again = _last_json(capsys.readouterr().out)
    assert again["trained"] == 0 and again["reused"] == 6
    assert weights.stat().st_mtime_ns == stamp
    assert json.loads((out / "report.json").read_text())["curve"] == report["curve"]
    # a new L0 value trains only its own SAEs
    assert main([*SEARCH, "--l0s", "1", "2", "3", "4", "--out", str(out)]) == 0
    grown = _last_json(capsys.readouterr().out)
    assert grown["trained"] == 2 and grown["reused"] == 6


def test_l0_search_rejects_a_grid_without_a_curve(tmp_path, capsys):
    assert main([*SEARCH, "--l0s", "2", "4", "--out", str(tmp_path)]) == 2
    assert "at least 3 distinct values" in capsys.readouterr().err


@pytest.fixture
def acts_file(tmp_path):
    rng = np.random.default_rng(0)
    acts = (rng.random((2000, 48)) < 0.1) * rng.random((2000, 48)) @ rng.standard_normal((48, 12))
    path = tmp_path / "acts.npy"
    np.save(path, acts.astype(np.float32))
    return path


def test_train_with_seeds_then_eval_the_seeds(tmp_path, acts_file, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(acts_file), "--arch", "topk", "--k", "4", "--d-sae", "24",
                 "--total-tokens", "25600", "--batch-size", "256", "--seeds", "3",
                 "--no-progress", "--no-measure-peak", "--init-samples", "1024", "--out", str(run)])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert set(summary["saved"]) == {"topk_seed0", "topk_seed1", "topk_seed2"}
    seeds = summary["across_seeds"]["topk"]
    assert seeds["last_logged"]["mse"]["n"] == 3 and seeds["last_logged"]["c_dec"]["ci95"] > 0
    assert 0 < seeds["stability_across_seeds"]["mean"] < 1
    folders = [str(run / "final" / f"topk_seed{s}") for s in range(3)]
    assert main(["eval", *folders, "--data", str(acts_file), "--out", str(tmp_path / "seeds.json")]) == 0
    text = capsys.readouterr().out
    assert "stability" in text and "c_dec" in text
    result = json.loads((tmp_path / "seeds.json").read_text())
    assert result["summary"]["explained_variance"]["n"] == 3
    assert len(result["across_seeds"]["pairs"]) == 3
    single = json.loads((run / "final" / "topk_seed0" / "eval.json").read_text())
    assert 0 <= single["proxies"]["decoder_pairwise_cosine"] <= 1
