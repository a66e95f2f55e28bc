"""SAGE against the loopback server, probing a real (tiny, local) GPT-2 through a real SAE."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("openai")
pytest.importorskip("transformers")

from saelab.interp import (
    ActivationProbe,
    CollectConfig,
    LLMClient,
    LLMConfig,
    SageConfig,
    SageExplainer,
    SageResult,
    collect_examples,
)
from saelab.interp.loopback import ChatServer, KeywordResponder, Reply
from saelab.models.hf import load_hf_model
from saelab.models.tiny import build_tiny_gpt2
from saelab.text import corpus_path
from tests.helpers import small_sae


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActivationProbe, Any, int]:
    folder = build_tiny_gpt2(tmp_path_factory.mktemp("tiny"), n_layer=2, d_model=32)
    loaded = load_hf_model(folder)
    sae = small_sae("topk", d_in=32, d_sae=64)
    probe = ActivationProbe(loaded.model, loaded.tokenizer, "transformer.h.0", sae)
    examples = collect_examples(probe, [corpus_path()], list(range(64)),
                                CollectConfig(max_tokens=3000, window=16))
    latent = max(examples, key=lambda lat: len(examples[lat].held_out))
    return probe, examples[latent], loaded


def run_sage(probe: ActivationProbe, examples: Any, responder: Any,
             cfg: SageConfig) -> SageResult:
    with ChatServer(responder) as server:
        client = LLMClient(LLMConfig(base_url=server.url, model="agent", backoff_s=0.01,
                                     max_retries=1))

        async def go() -> SageResult:
            try:
                return await SageExplainer(client, probe, cfg).run(examples)
            finally:
                await client.aclose()
        return asyncio.run(go())


def direct_codes(loaded: Any, probe: ActivationProbe, text: str, latent: int) -> list[float]:
    """Independent path: the tokenizer, the model's own hidden_states and sae.encode."""
    ids = [loaded.tokenizer.bos_token_id,
           *loaded.tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        codes = probe.sae.encode(out.hidden_states[1][0])  # output of transformer.h.0
    return codes[1:, latent].tolist()  # BOS left out, as the probe does


def test_every_probe_went_through_model_and_sae(setup: Any) -> None:
    probe, examples, loaded = setup
    result = run_sage(probe, examples, KeywordResponder(),
                      SageConfig(max_rounds=3, min_rounds=2, min_tests=2))
    runs = [s for s in result.transcript["steps"] if s["state"] == "RUN_TEST"]
    assert runs
    n_probes = 0
    for step in runs:
        for r in step["results"]:
            expected = direct_codes(loaded, probe, r["text"], examples.latent)
            assert r["activations"] == pytest.approx(expected, abs=1e-5)
            assert len(r["tokens"]) == len(r["activations"]) > 0
            n_probes += 1
    assert n_probes == 4 * len(runs)
    # the keyword probes contain the exemplars' top token: the latent really fires on them
    assert any(r["max_activation"] > 0 for s in runs for r in s["results"])


def states(result: SageResult) -> list[str]:
    return [s["state"] for s in result.transcript["steps"]]


def test_paper_stopping_rule_converges_at_round_12(setup: Any) -> None:
    probe, examples, _ = setup

    def confirm_all(body: dict) -> Reply:
        reply = KeywordResponder()(body)
        text = body["messages"][-1]["content"]
        if text.startswith("TASK: ANALYZE_RESULT"):
            return Reply(json.dumps({"analysis": "fits", "verdict": "confirm"}))
        return reply
    result = run_sage(probe, examples, confirm_all, SageConfig())  # the paper's defaults
    t = result.transcript
    assert t["stop_reason"] == "converged" and t["rounds"] == 12 and t["tests_run"] >= 8
    assert all(h["status"] == "confirmed" for h in t["hypotheses"])


def test_stops_at_max_rounds_when_hypotheses_stay_pending(setup: Any) -> None:
    probe, examples, _ = setup

    def always_refine(body: dict) -> Reply:
        text = body["messages"][-1]["content"]
        if text.startswith("TASK: ANALYZE_RESULT"):
            return Reply(json.dumps({"analysis": "unclear", "verdict": "refine",
                                     "hypothesis": "the word \"the\" more narrowly"}))
        return KeywordResponder()(body)
    result = run_sage(probe, examples, always_refine,
                      SageConfig(max_rounds=5, min_rounds=2, min_tests=1, n_hypotheses=1))
    assert result.transcript["stop_reason"] == "max_rounds"
    assert result.transcript["rounds"] == 5
    assert states(result).count("RUN_TEST") == 5


def test_needs_min_tests_and_proposes_again_after_rejections(setup: Any) -> None:
    probe, examples, _ = setup
    verdicts = iter(["reject", "confirm", "confirm", "confirm", "confirm", "confirm", "confirm"])

    def scripted(body: dict) -> Reply:
        text = body["messages"][-1]["content"]
        if text.startswith("TASK: ANALYZE_RESULT"):
            return Reply(json.dumps({"analysis": "a", "verdict": next(verdicts)}))
        if text.startswith("TASK: ANALYZE_EXEMPLARS"):
            return Reply(json.dumps({"hypotheses": ["the word \"the\""]}))
        return KeywordResponder()(body)
    result = run_sage(probe, examples, scripted,
                      SageConfig(max_rounds=14, min_rounds=1, min_tests=4, n_hypotheses=1))
    t = result.transcript
    assert states(result).count("ANALYZE_EXEMPLARS") == 2  # all rejected → new hypotheses
    assert t["tests_run"] == 4 and t["rounds"] == 4 and t["stop_reason"] == "converged"


def test_transcript_is_complete(setup: Any, tmp_path: Path) -> None:
    probe, examples, _ = setup
    result = run_sage(probe, examples, KeywordResponder(),
                      SageConfig(max_rounds=3, min_rounds=3, min_tests=2))
    t = json.loads(json.dumps(result.transcript))  # plain JSON
    steps = t["steps"]
    assert [s["step"] for s in steps] == list(range(len(steps)))
    names = [s["state"] for s in steps]
    assert names[:3] == ["INIT", "GET_EXEMPLARS", "ANALYZE_EXEMPLARS"]
    assert names[-2:] == ["REVIEW_ALL_HYPOTHESES", "FINAL_CONCLUSION"]
    assert len(steps[1]["exemplars"]) == min(10, len(examples.train))
    for state in ("DESIGN_TEST", "RUN_TEST", "ANALYZE_RESULT", "UPDATE_HYPOTHESIS"):
        assert names.count(state) == t["tests_run"]
    for rnd in range(1, t["rounds"] + 1):
        for h in {s["hypothesis"] for s in steps if s["round"] == rnd and "hypothesis" in s}:
            got = [s["state"] for s in steps if s["round"] == rnd and s.get("hypothesis") == h]
            assert got == ["DESIGN_TEST", "RUN_TEST", "ANALYZE_RESULT", "UPDATE_HYPOTHESIS"]
    for s in steps:
        if s["state"] in ("ANALYZE_EXEMPLARS", "DESIGN_TEST", "ANALYZE_RESULT",
                          "REVIEW_ALL_HYPOTHESES", "FINAL_CONCLUSION"):
            assert s["prompt"] and s["answer"] and s["parsed"] is not None
    assert t["explanation"] == result.explanation.text and result.explanation.text
    assert result.explanation.details["parts"] == t["final"]["parts"]


def test_a_failed_step_keeps_the_transcript(setup: Any) -> None:
    probe, examples, _ = setup

    def broken_final(body: dict) -> Reply:
        if body["messages"][-1]["content"].startswith("TASK: FINAL_CONCLUSION"):
            return Reply("no json here")
        return KeywordResponder()(body)
    result = run_sage(probe, examples, broken_final,
                      SageConfig(max_rounds=1, min_rounds=1, min_tests=1))
    assert result.explanation.failure and "gave up" in result.explanation.failure
    assert states(result)[-1] == "FAILED" and "REVIEW_ALL_HYPOTHESES" in states(result)
