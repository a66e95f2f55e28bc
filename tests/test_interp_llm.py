"""The LLM client against a real chat-completions server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")

from saelab.interp import (
    DetectionScorer,
    FolderSink,
    FuzzingScorer,
    LLMClient,
    LLMConfig,
    LLMExplainer,
    LLMFailure,
    Pipeline,
    SimulationScorer,
)
from saelab.interp.examples import synthetic_examples
from saelab.interp.loopback import ChatServer, KeywordResponder, Reply, task_of
from saelab.interp.prompts import parse_explanation

HI = [{"role": "user", "content": "hi"}]
OK = "Thinking.\n[EXPLANATION]: the word cat"


def client(server: ChatServer, tmp_path: Path | None = None, **kw: object) -> LLMClient:
    options: dict = {"backoff_s": 0.01, "timeout_s": 5.0, **kw}
    cfg = LLMConfig(base_url=server.url, model="test-model",
                    cache_dir=str(tmp_path / "cache") if tmp_path else "", **options)
    return LLMClient(cfg)


def ask(c: LLMClient, messages: list[dict[str, str]] = HI, **kw: object) -> str:
    async def go() -> str:
        try:
            return await c.complete(messages, parse_explanation, **kw)  # type: ignore[arg-type]
        finally:
            await c.aclose()
    return asyncio.run(go())


def test_request_shape_and_key_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAELAB_TEST_KEY", "sk-shape-123")
    with ChatServer(lambda body: Reply(OK)) as server:
        c = client(server, api_key_env="SAELAB_TEST_KEY", max_tokens=77, top_logprobs=4)
        assert ask(c, logprobs=True) == "the word cat"
        (req,) = server.chat_requests()
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-shape-123"
    body = req.body
    assert body["model"] == "test-model" and body["messages"] == HI
    assert body["stream"] is False and body["max_tokens"] == 77 and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == 4
    assert c.usage.requests == 1 and c.usage.completion_tokens > 0


def test_concurrency_is_bounded() -> None:
    with ChatServer(lambda body: Reply(OK), delay=0.05) as server:
        c = client(server, max_concurrency=3)

        async def many() -> list[str]:
            try:
                return await asyncio.gather(*(c.complete(
                    [{"role": "user", "content": str(i)}], parse_explanation) for i in range(12)))
            finally:
                await c.aclose()
        assert len(asyncio.run(many())) == 12
        assert server.max_in_flight == 3


def test_retries_on_429_and_500_then_succeeds() -> None:
    script = iter([Reply(status=429, headers={"retry-after": "0"}), Reply(status=500),
                   Reply(status=503), Reply(OK)])
    with ChatServer(lambda body: next(script)) as server:
        c = client(server)
        assert ask(c) == "the word cat"
        assert len(server.chat_requests()) == 4
    assert c.usage.retries == 3 and c.usage.failures == 0


def test_timeout_is_retried() -> None:
    script = iter([Reply(OK, delay=1.0), Reply(OK)])
    with ChatServer(lambda body: next(script)) as server:
        c = client(server, timeout_s=0.25)
        start = time.perf_counter()
        assert ask(c) == "the word cat"
        assert time.perf_counter() - start < 0.9  # did not wait for the slow answer
        assert len(server.chat_requests()) == 2


def test_malformed_json_is_retried_then_failure() -> None:
    script = iter([Reply(raw=b'{"choices": [ not json'), Reply(OK)])
    with ChatServer(lambda body: next(script)) as server:
        assert ask(client(server)) == "the word cat"
    with ChatServer(lambda body: Reply(raw=b"<html>oops</html>")) as server:
        c = client(server, max_retries=2)
        with pytest.raises(LLMFailure, match="malformed"):
            ask(c)
        assert len(server.chat_requests()) == 3 and c.usage.failures == 1


def test_refused_and_unparsable_answers_are_retried_then_recorded() -> None:
    with ChatServer(lambda body: Reply(refusal="I can't help with that")) as server:
        c = client(server, max_retries=1)
        with pytest.raises(LLMFailure, match="refused"):
            ask(c)
        assert len(server.chat_requests()) == 2
    script = iter([Reply("I'm sorry, I cannot do that."), Reply("no marker here"), Reply(OK)])
    with ChatServer(lambda body: next(script)) as server:
        assert ask(client(server)) == "the word cat"


def test_a_failing_latent_does_not_stop_the_batch(tmp_path: Path) -> None:
    judge = KeywordResponder()

    def responder(body: dict) -> Reply:
        if task_of(body) == "explain" and "<<river>>" in body["messages"][-1]["content"]:
            return Reply(refusal="refused")
        return judge(body)

    examples = [synthetic_examples(i) for i in range(3)]  # latent 1 is about "river"
    with ChatServer(responder) as server:
        c = client(server, max_retries=1)
        summary = Pipeline(LLMExplainer(c), [DetectionScorer(c)], FolderSink(tmp_path),
                           client=c, progress=False).run(examples)
    records = {r["latent"]: r for r in FolderSink(tmp_path).records()}
    assert summary.failures == 1 and set(records) == {0, 1, 2}
    assert records[1]["explanation"]["failure"] and "refused" in records[1]["failures"][0]
    assert records[0]["scores"]["detection"]["value"] == 1.0


def test_cache_second_run_sends_nothing_and_gives_the_same_result(tmp_path: Path) -> None:
    examples = [synthetic_examples(i) for i in range(3)]
    results = []
    with ChatServer(KeywordResponder()) as server:
        for run in range(2):
            c = client(server, tmp_path)
            sink = FolderSink(tmp_path / f"out{run}")  # a fresh output: only the cache is shared
            scorers = [DetectionScorer(c), FuzzingScorer(c), SimulationScorer(c)]
            summary = Pipeline(LLMExplainer(c), scorers, sink, client=c, progress=False
                               ).run(examples)
            results.append([{k: v for k, v in r.items()} for r in sink.records()])
            if run == 0:
                first = len(server.chat_requests())
                assert first > 0 and summary.usage["cache_hits"] == 0
        assert len(server.chat_requests()) == first  # the second run sent no request
        assert summary.usage["requests"] == 0 and summary.usage["cache_hits"] == first

    def strip(rs: list[dict]) -> list:
        return [(r["explanation"]["text"], {k: v["value"] for k, v in r["scores"].items()})
                for r in rs]
    assert strip(results[0]) == strip(results[1])
    assert results[0][0]["scores"]["simulation"]["value"] > 0.9


RESUME_SCRIPT = """
import json, sys
from saelab.interp import LatentExamples, LLMClient, LLMConfig, LLMExplainer, DetectionScorer
from saelab.interp import FolderSink, Pipeline
url, folder, data = sys.argv[1:4]
examples = [LatentExamples.from_dict(d) for d in json.load(open(data))]
c = LLMClient(LLMConfig(base_url=url, model="m", max_concurrency=2, cache_dir=folder + "/cache",
                        api_key_env="SAELAB_TEST_KEY"))
Pipeline(LLMExplainer(c), [DetectionScorer(c)], FolderSink(folder + "/out"), client=c,
         max_latents=2, progress=False).run(examples)
"""


def test_resume_after_kill_and_no_key_in_any_file(tmp_path: Path) -> None:
    key = "sk-do-not-write-me-4242"
    examples = [synthetic_examples(i) for i in range(12)]
    data = tmp_path / "examples.json"
    data.write_text(json.dumps([e.to_dict() for e in examples]))
    env = {**os.environ, "SAELAB_TEST_KEY": key}
    out = tmp_path / "run"
    with ChatServer(KeywordResponder(), delay=0.08) as server:
        cmd = [sys.executable, "-c", RESUME_SCRIPT, server.url, str(out), str(data)]
        proc = subprocess.Popen(cmd, env=env)
        deadline = time.time() + 60
        while len(list((out / "out" / "latents").glob("*.json"))) < 3:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        done_before = {int(p.stem) for p in (out / "out" / "latents").glob("*.json")}
        assert 3 <= len(done_before) < 12
        sent_before = len(server.chat_requests())
        subprocess.run(cmd, env=env, check=True, timeout=120)
        second = server.chat_requests()[sent_before:]
        assert all(r.headers["authorization"] == f"Bearer {key}" for r in server.requests)
    records = FolderSink(out / "out").records()
    assert sorted(r["latent"] for r in records) == list(range(12))
    assert all(not r["failures"] for r in records)
    # The rerun asked nothing about latents finished before the kill.
    for r in second:
        text = r.body["messages"][-1]["content"]
        for lat in done_before:
            assert synthetic_examples(lat).top[0].text.strip() not in text
    # Every request of the first run that got an answer is cached: total requests stay
    # below two full runs.
    full = 12 * (1 + 4)  # one explanation and 4 detection batches per latent
    assert len(server.chat_requests()) < full + sent_before
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"API key written to {path}"
