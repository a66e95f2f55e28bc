"""The explain-and-score pipeline over many latents (delphi's stages: examples → explain →
score), concurrent, resumable and never stopped by one latent's failure.

Each latent's result (explanation, scores, and for SAGE the transcript) is written the moment
the latent is done, atomically, to a :class:`ResultSink`. A rerun skips latents whose result is
complete and redoes only what is missing or failed; with the LLM response cache the requests
that had already succeeded cost nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from saelab.interp.examples import LatentExamples
from saelab.interp.explainers import Explainer, Explanation
from saelab.interp.llm import AnswerError, LLMClient, LLMFailure
from saelab.interp.sage import SageExplainer
from saelab.interp.scorers import Score, Scorer
from saelab.io import atomic_write_json

log = logging.getLogger("saelab.interp")


class ResultSink(Protocol):
    """Where per-latent results go; :class:`FolderSink` and the feature-store sink implement it."""

    def read(self, latent: int) -> dict[str, Any] | None: ...

    def write(self, latent: int, record: dict[str, Any],
              transcript: dict[str, Any] | None) -> None: ...


class FolderSink:
    """``OUT/latents/<id>.json`` per latent and ``OUT/transcripts/<id>.json`` for SAGE."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def read(self, latent: int) -> dict[str, Any] | None:
        path = self.folder / "latents" / f"{latent}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write(self, latent: int, record: dict[str, Any],
              transcript: dict[str, Any] | None) -> None:
        if transcript is not None:
            atomic_write_json(self.folder / "transcripts" / f"{latent}.json", transcript)
        atomic_write_json(self.folder / "latents" / f"{latent}.json", record)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.folder / "latents").glob("*.json"))]


class Progress:
    """A progress line (latents done, rate, ETA, requests and tokens) on stderr and in the log,
    at most every ``interval`` seconds."""

    def __init__(self, total: int, label: str, client: LLMClient | None, enabled: bool = True,
                 interval: float = 2.0) -> None:
        self.total, self.label, self.client = total, label, client
        self.enabled, self.interval = enabled, interval
        self.done = self.skipped = self.failed = 0
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        worked = self.done - self.skipped
        rate = worked / max(now - self.start, 1e-9) * 60
        remaining = (self.total - self.done) / (rate / 60) if rate > 0 else math.inf
        eta = "?" if math.isinf(remaining) else time.strftime("%H:%M:%S", time.gmtime(remaining))
        line = (f"{self.label}: {self.done}/{self.total} latents ({self.skipped} already done, "
                f"{self.failed} with failures) | {rate:.1f} latents/min | ETA {eta}")
        if self.client is not None:
            line += " | " + self.client.usage.line()
        log.info(line)
        if self.enabled:
            sys.stderr.write("\r" + line[:200].ljust(120) + ("\n" if force else ""))
            sys.stderr.flush()


@dataclass
class RunSummary:
    latents: int
    skipped: int
    failures: int
    seconds: float
    mean_scores: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"latents": self.latents, "skipped": self.skipped, "failures": self.failures,
                "seconds": round(self.seconds, 3),
                "mean_scores": {k: (None if math.isnan(v) else v)
                                for k, v in self.mean_scores.items()},
                "usage": self.usage}


def _complete(record: dict[str, Any] | None, method: str, scorers: Sequence[str]) -> bool:
    if not record:
        return False
    expl = record.get("explanation") or {}
    if expl.get("failure") or expl.get("method") != method:
        return False
    scores = record.get("scores", {})
    return all(name in scores and not scores[name].get("failure") for name in scorers)


class Pipeline:
    """Explain then score every latent, ``max_latents`` of them at a time."""

    def __init__(self, explainer: Explainer | SageExplainer, scorers: Sequence[Scorer],
                 sink: ResultSink, *, client: LLMClient | None = None, max_latents: int = 32,
                 progress: bool = True, label: str = "explain") -> None:
        self.explainer, self.scorers, self.sink = explainer, list(scorers), sink
        self.client, self.max_latents = client, max_latents
        self.progress_enabled, self.label = progress, label

    def run(self, examples: Sequence[LatentExamples]) -> RunSummary:
        return asyncio.run(self.arun(examples))

    async def arun(self, examples: Sequence[LatentExamples]) -> RunSummary:
        progress = Progress(len(examples), self.label, self.client, self.progress_enabled)
        gate = asyncio.Semaphore(self.max_latents)
        records: list[dict[str, Any]] = []
        names = [s.name for s in self.scorers]

        async def one(ex: LatentExamples) -> None:
            async with gate:
                previous = self.sink.read(ex.latent)
                if _complete(previous, self.explainer.method, names):
                    progress.skipped += 1
                    record = previous
                else:
                    record = await self.latent(ex, previous)
                assert record is not None
                records.append(record)
                progress.done += 1
                progress.failed += bool(record.get("failures"))
                progress.update()

        start = time.perf_counter()
        try:
            await asyncio.gather(*(one(ex) for ex in examples))
        finally:
            if self.client is not None:
                await self.client.aclose()
        progress.update(force=True)
        means = {}
        for name in names:
            values = [r["scores"][name]["value"] for r in records
                      if name in r.get("scores", {}) and r["scores"][name]["value"] is not None]
            means[name] = sum(values) / len(values) if values else math.nan
        usage = self.client.usage.__dict__.copy() if self.client is not None else {}
        return RunSummary(len(examples), progress.skipped,
                          sum(1 for r in records if r.get("failures")),
                          time.perf_counter() - start, means, usage)

    async def latent(self, ex: LatentExamples, previous: dict[str, Any] | None
                     ) -> dict[str, Any]:
        record: dict[str, Any] = {"latent": ex.latent, "scores": {}, "failures": []}
        transcript = None
        old = (previous or {}).get("explanation") or {}
        if old and not old.get("failure") and old.get("method") == self.explainer.method:
            explanation = Explanation.from_dict(old)
            record["scores"] = {k: v for k, v in (previous or {}).get("scores", {}).items()
                                if not v.get("failure")}
        elif isinstance(self.explainer, SageExplainer):
            result = await self.explainer.run(ex)
            explanation, transcript = result.explanation, result.transcript
        else:
            try:
                explanation = await self.explainer.explain(ex)
            except (LLMFailure, AnswerError) as err:
                explanation = Explanation(ex.latent, "", self.explainer.method,
                                          self._model(), failure=str(err))
        record["explanation"] = explanation.to_dict()
        if explanation.failure:
            record["failures"].append(f"explain: {explanation.failure}")
        else:
            todo = [s for s in self.scorers if s.name not in record["scores"]]
            results = await asyncio.gather(*(self._score(s, ex, explanation.text) for s in todo))
            for s in results:
                record["scores"][s.scorer] = s.to_dict()
                if s.failure:
                    record["failures"].append(f"{s.scorer}: {s.failure}")
        self.sink.write(ex.latent, record, transcript)
        return record

    async def _score(self, scorer: Scorer, ex: LatentExamples, text: str) -> Score:
        try:
            return await scorer.score(ex, text)
        except (LLMFailure, AnswerError) as err:
            return Score(ex.latent, scorer.name, text, math.nan, self._model(), failure=str(err))

    def _model(self) -> str:
        return self.client.cfg.model if self.client is not None else ""
