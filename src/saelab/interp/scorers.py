"""Scorers: how well an explanation predicts where a latent fires, on held-out contexts.

Each returns a :class:`Score` with one headline ``value`` and the details behind it:

- ``detection``: the LLM marks which of a shuffled mix of activating and non-activating
  held-out contexts fit the explanation; value = balanced accuracy (F1 etc. in details).
- ``fuzzing``: activating contexts with their active tokens highlighted and non-activating ones
  with as many random tokens highlighted; the LLM judges whether the highlights fit; value =
  balanced accuracy.
- ``simulation``: the LLM predicts each token's activation (0-10, expected digit under the
  renormalised top logprobs) on a 4 high / 3 medium / 3 low sample; value = Pearson r.
- ``generation``: the LLM writes N texts from the explanation, the real model and SAE read them;
  value = share whose maximum activation reaches the threshold.
- ``embedding`` (offline): cosine of MiniLM embeddings of the explanation and of each context;
  value = AUROC of activating against non-activating contexts.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from saelab.interp.embedding import SentenceEmbedder
from saelab.interp.examples import Context, LatentExamples
from saelab.interp.explainers import now
from saelab.interp.llm import LLMClient
from saelab.interp.probe import ActivationProbe
from saelab.interp.prompts import (
    binary_list_parser,
    detection_messages,
    fuzzing_messages,
    generation_messages,
    generation_parser,
    simulation_messages,
    simulation_parser,
)
from saelab.metrics.autointerp import auroc, binary_scores, pearson


@dataclass
class Score:
    """One scorer's result for one explanation of one latent."""

    latent: int
    scorer: str
    explanation: str
    value: float
    model: str
    created: str = field(default_factory=now)
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        value = None if math.isnan(self.value) else self.value
        return {"latent": self.latent, "scorer": self.scorer, "explanation": self.explanation,
                "value": value, "model": self.model, "created": self.created,
                "failure": self.failure, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        value = math.nan if d.get("value") is None else float(d["value"])
        return cls(int(d["latent"]), d["scorer"], d["explanation"], value, d["model"],
                   d["created"], d.get("failure"), d.get("details", {}))


class Scorer(Protocol):
    name: str

    async def score(self, examples: LatentExamples, explanation: str) -> Score: ...


def _rng(seed: int, latent: int) -> random.Random:
    return random.Random(seed * 1_000_003 + latent)


class _BinaryJudgeScorer:
    """Shared by detection and fuzzing: labelled texts in shuffled batches of ``batch_size``."""

    name = ""

    def __init__(self, client: LLMClient, batch_size: int = 5, seed: int = 0) -> None:
        self.client, self.batch_size, self.seed = client, batch_size, seed

    def items(self, examples: LatentExamples, rng: random.Random) -> list[tuple[str, int]]:
        raise NotImplementedError

    def messages(self, explanation: str, texts: list[str]) -> Any:
        raise NotImplementedError

    async def score(self, examples: LatentExamples, explanation: str) -> Score:
        rng = _rng(self.seed, examples.latent)
        items = self.items(examples, rng)
        rng.shuffle(items)
        batches = [items[i: i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        answers = await asyncio.gather(*(
            self.client.complete(self.messages(explanation, [t for t, _ in b]),
                                 binary_list_parser(len(b))) for b in batches))
        truth = [label for b in batches for _, label in b]
        predicted = [p for a in answers for p in a]
        scores = binary_scores(truth, predicted)
        return Score(examples.latent, self.name, explanation, scores.balanced_accuracy,
                     self.client.cfg.model, details=scores.to_dict())


class DetectionScorer(_BinaryJudgeScorer):
    name = "detection"

    def items(self, examples: LatentExamples, rng: random.Random) -> list[tuple[str, int]]:
        return [(c.text, 1) for c in examples.held_out] + \
            [(c.text, 0) for c in examples.held_out_negatives]

    def messages(self, explanation: str, texts: list[str]) -> Any:
        return detection_messages(explanation, texts)


class FuzzingScorer(_BinaryJudgeScorer):
    """delphi's fuzzing: true highlights (tokens ≥ ``fraction``·max of the context) on
    activating contexts; on non-activating ones ceil(mean highlighted count) random tokens."""

    name = "fuzzing"

    def __init__(self, client: LLMClient, batch_size: int = 5, seed: int = 0,
                 fraction: float = 0.3) -> None:
        super().__init__(client, batch_size, seed)
        self.fraction = fraction

    def items(self, examples: LatentExamples, rng: random.Random) -> list[tuple[str, int]]:
        positives = [(c, c.active_positions(self.fraction)) for c in examples.held_out]
        n_marked = math.ceil(sum(len(p) for _, p in positives) / max(1, len(positives))) or 1
        out = [(c.marked(p), 1) for c, p in positives]
        for c in examples.held_out_negatives:
            spots = sorted(rng.sample(range(len(c.tokens)), min(n_marked, len(c.tokens))))
            out.append((c.marked(spots), 0))
        return out

    def messages(self, explanation: str, texts: list[str]) -> Any:
        return fuzzing_messages(explanation, texts)


class SimulationScorer:
    """SAGE's predictive accuracy: Pearson r between predicted (0-10, expected digit under
    the renormalised top logprobs) and true activations over all tokens of the sample."""

    name = "simulation"

    def __init__(self, client: LLMClient, high: int = 4, medium: int = 3, low: int = 3,
                 seed: int = 0) -> None:
        self.client, self.split, self.seed = client, (high, medium, low), seed

    async def score(self, examples: LatentExamples, explanation: str) -> Score:
        sample = examples.simulation_sample(*self.split, seed=self.seed)
        predictions = await asyncio.gather(*(
            self.client.complete(simulation_messages(explanation, c),
                                 simulation_parser(len(c.tokens)), logprobs=True)
            for c in sample))
        predicted = [p for pred in predictions for p in pred]
        true = [a for c in sample for a in c.activations]
        per_context = [pearson(p, c.activations) for p, c in zip(predictions, sample, strict=True)]
        details = {"n_contexts": len(sample), "n_tokens": len(true),
                   "per_context_r": [None if math.isnan(r) else r for r in per_context]}
        return Score(examples.latent, self.name, explanation, pearson(predicted, true),
                     self.client.cfg.model, details=details)


class GenerationScorer:
    """SAGE's generative accuracy: share of ``n`` LLM-written texts whose maximum activation
    reaches ``threshold`` (absolute), or ``relative_threshold``·(max activation over the
    latent's examples) when ``threshold`` is None."""

    name = "generation"

    def __init__(self, client: LLMClient, probe: ActivationProbe, n: int = 10,
                 threshold: float | None = None, relative_threshold: float = 0.3) -> None:
        self.client, self.probe, self.n = client, probe, n
        self.threshold, self.relative_threshold = threshold, relative_threshold

    async def score(self, examples: LatentExamples, explanation: str) -> Score:
        texts = await self.client.complete(generation_messages(explanation, self.n),
                                           generation_parser(self.n), temperature=0.7)
        runs = await asyncio.to_thread(self.probe.run, texts, [examples.latent])
        threshold = self.threshold if self.threshold is not None else \
            self.relative_threshold * examples.max_activation
        maxima = [r.max_activation(examples.latent) for r in runs]
        hits = [m >= threshold and m > 0 for m in maxima]
        details = {"threshold": threshold, "texts": texts, "max_activations": maxima}
        return Score(examples.latent, self.name, explanation, sum(hits) / len(hits),
                     self.client.cfg.model, details=details)


class EmbeddingScorer:
    """Offline: AUROC of cos(embed(explanation), embed(context)) between held-out activating
    and non-activating contexts."""

    name = "embedding"

    def __init__(self, embedder: SentenceEmbedder | None = None) -> None:
        self.embedder = embedder or SentenceEmbedder()
        self._memo: dict[str, Any] = {}  # context text → unit vector, shared across latents

    def _vectors(self, texts: list[str]) -> Any:
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            self._memo.update(zip(missing, self.embedder.embed(missing), strict=True))
        return torch.stack([self._memo[t] for t in texts])

    async def score(self, examples: LatentExamples, explanation: str) -> Score:
        return self.score_now(examples, explanation)

    def score_now(self, examples: LatentExamples, explanation: str) -> Score:
        contexts: list[Context] = examples.held_out + examples.held_out_negatives
        query = self.embedder.embed([explanation])[0]
        sims = (self._vectors([c.text.strip() for c in contexts]) @ query).tolist()
        n_pos = len(examples.held_out)
        value = auroc(sims[:n_pos], sims[n_pos:])
        details = {"n_positive": n_pos, "n_negative": len(contexts) - n_pos,
                   "mean_similarity_positive": sum(sims[:n_pos]) / max(1, n_pos),
                   "mean_similarity_negative": sum(sims[n_pos:]) / max(1, len(sims) - n_pos)}
        return Score(examples.latent, self.name, explanation, value, self.embedder.name,
                     details=details)


LLM_SCORERS = ("detection", "fuzzing", "simulation", "generation")
ALL_SCORERS = (*LLM_SCORERS, "embedding")
