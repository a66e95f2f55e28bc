"""``saelab explain`` on a real feature store: examples in, explanations, scores and SAGE
transcripts out, shown and searchable in the explorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("transformers")

from saelab.cli import main
from saelab.explore import pages
from saelab.features import FeatureStore
from saelab.interp.store import examples_from_store
from tests.feature_helpers import TinySetup, make_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return make_setup(tmp_path_factory.mktemp("explain"))


def busiest(setup: TinySetup, n: int) -> list[int]:
    store = FeatureStore(setup.sae_dir)
    rows = store.list_latents("density", descending=True, limit=n)
    return sorted(r["id"] for r in rows)


def test_store_examples_are_split_disjointly(setup: TinySetup) -> None:
    store = FeatureStore(setup.sae_dir)
    (latent,) = busiest(setup, 1)
    ex = examples_from_store(store, [latent])[latent]
    shown = {c.text for c in ex.train + ex.negatives}
    held = {c.text for c in ex.held_out + ex.held_out_negatives}
    assert ex.top and ex.held_out and ex.held_out_negatives
    assert not shown & held
    assert all(c.max_activation > 0 for c in ex.train + ex.held_out)
    assert all(c.max_activation == 0 for c in ex.negatives + ex.held_out_negatives)
    stored_max = store.summary(latent)["max_act"]  # type: ignore[index]
    assert ex.top[0].max_activation == pytest.approx(stored_max, abs=1e-4)  # store rounds to 4 digits


def test_offline_explain_writes_store_rows_and_resumes(setup: TinySetup,
                                                       capsys: pytest.CaptureFixture) -> None:
    latents = busiest(setup, 3)
    spec = ",".join(map(str, latents))
    assert main(["explain", str(setup.sae_dir), "--latents", spec, "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert summary["latents"] == 3 and summary["failures"] == 0
    store = FeatureStore(setup.sae_dir)
    for lat in latents:
        (expl,) = store.explanations(lat)
        assert expl["method"] == "ngram" and expl["text"].startswith("the tokens")
        (score,) = expl["scores"]
        assert score["scorer"] == "embedding" and score["metric"] == "auroc"
        assert 0.0 <= score["value"] <= 1.0
    word = store.explanations(latents[0])[0]["text"].split('"')[1]
    assert latents[0] in [r["id"] for r in store.search(word)]
    # a rerun skips finished latents and adds no duplicate rows
    assert main(["explain", str(setup.sae_dir), "--latents", spec, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"): out.rindex("}") + 1])["skipped"] == 3
    assert all(len(store.explanations(lat)) == 1 for lat in latents)


def test_agentic_explain_stores_transcripts_shown_in_explorer(setup: TinySetup) -> None:
    latents = busiest(setup, 2)
    args = ["explain", str(setup.sae_dir), "--latents", ",".join(map(str, latents)),
            "--agentic", "--loopback", "--scorer", "simulation", "generation",
            "--sage-max-rounds", "2", "--sage-min-rounds", "1", "--sage-min-tests", "1",
            "--generation-texts", "3", "--no-progress"]
    assert main(args) == 0
    store = FeatureStore(setup.sae_dir)
    data = store.feature(latents[0])
    assert data is not None
    sage = [e for e in data["explanations"] if e["method"] == "sage"]
    assert len(sage) == 1
    assert {s["scorer"] for s in sage[0]["scores"]} == {"simulation", "generation"}
    (transcript,) = data["transcripts"]
    assert transcript["explanation_id"] == sage[0]["id"]
    steps = transcript["content"]["steps"]
    assert steps[0]["state"] == "INIT" and steps[-1]["state"] == "FINAL_CONCLUSION"
    html = pages.feature_page(data, store.meta, pages.Links())
    assert "SAGE transcript" in html and "RUN_TEST" in html
    run_dir = setup.sae_dir / "features" / "explain" / "sage-loopback"
    assert (run_dir / "transcripts" / f"{latents[0]}.json").exists()
    assert json.loads((run_dir / "run.json").read_text())["config"]["agentic"] is True


def test_clear_errors(setup: TinySetup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", str(tmp_path), "--latents", "0"]) == 2
    assert "saelab features build" in capsys.readouterr().err
    assert main(["explain", str(setup.sae_dir), "--latents", "0", "--method", "llm"]) == 2
    assert "--llm-model" in capsys.readouterr().err
    assert main(["explain", str(setup.sae_dir), "--latents", "5-2"]) == 2
    assert "below the start" in capsys.readouterr().err
