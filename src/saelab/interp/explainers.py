"""Explainers: from a latent's examples to a one-sentence explanation.

:class:`LLMExplainer` asks the LLM with delphi's prompt (top and quantile contexts, activating
tokens marked). :class:`NgramExplainer` needs no LLM: it names the tokens and bigrams that most
distinguish the activating positions from the non-activating contexts, so the pipeline runs end
to end on a machine without a server.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from saelab.interp.examples import Context, LatentExamples
from saelab.interp.llm import LLMClient
from saelab.interp.prompts import explain_messages, parse_explanation


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Explanation:
    """One latent's explanation and how it was made; ``failure`` is set when none could be."""

    latent: int
    text: str
    method: str
    model: str
    created: str = field(default_factory=now)
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"latent": self.latent, "text": self.text, "method": self.method,
                "model": self.model, "created": self.created, "failure": self.failure,
                "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Explanation:
        return cls(int(d["latent"]), d["text"], d["method"], d["model"], d["created"],
                   d.get("failure"), d.get("details", {}))


class Explainer(Protocol):
    method: str

    async def explain(self, examples: LatentExamples) -> Explanation: ...


class LLMExplainer:
    """delphi's explainer: top + quantile contexts with active tokens (≥ ``fraction``·max of
    their context) marked ``<<…>>`` and their 0-10 activation levels listed."""

    method = "llm"

    def __init__(self, client: LLMClient, *, show_activations: bool = True,
                 n_negatives: int = 0, fraction: float = 0.3) -> None:
        self.client = client
        self.show_activations = show_activations
        self.n_negatives = n_negatives
        self.fraction = fraction

    async def explain(self, examples: LatentExamples) -> Explanation:
        messages = explain_messages(examples.train, examples.negatives[: self.n_negatives],
                                    show_activations=self.show_activations,
                                    fraction=self.fraction)
        text = await self.client.complete(messages, parse_explanation)
        return Explanation(examples.latent, text, self.method, self.client.cfg.model)


class NgramExplainer:
    """Offline explainer. For every unigram and bigram ending at an active position (≥
    ``fraction``·max of its context) it counts the activating contexts that hold it there
    (a) and the non-activating contexts that hold it anywhere (b), and ranks by the smoothed
    log-odds log((a+½)/(A+1)) − log((b+½)/(B+1)). The explanation names the best ``n_terms``."""

    method = "ngram"

    def __init__(self, n_terms: int = 3, fraction: float = 0.3) -> None:
        self.n_terms = n_terms
        self.fraction = fraction

    async def explain(self, examples: LatentExamples) -> Explanation:
        return self.explain_now(examples)

    def explain_now(self, examples: LatentExamples) -> Explanation:
        active_counts: Counter[tuple[str, ...]] = Counter()
        for ctx in examples.train:
            active_counts.update(self._active_ngrams(ctx))
        negative_counts: Counter[tuple[str, ...]] = Counter()
        for ctx in examples.negatives:
            negative_counts.update(_all_ngrams(ctx))
        n_act, n_neg = max(1, len(examples.train)), len(examples.negatives)

        def score(gram: tuple[str, ...]) -> float:
            a, b = active_counts[gram], negative_counts[gram]
            return math.log((a + 0.5) / (n_act + 1)) - math.log((b + 0.5) / (n_neg + 1))

        ranked = sorted(active_counts, key=lambda g: (-score(g), -active_counts[g], g))
        chosen: list[tuple[str, ...]] = []
        for gram in ranked:
            if any(set(gram) <= set(c) or set(c) <= set(gram) for c in chosen):
                continue  # "of the" and "the" say the same thing twice
            chosen.append(gram)
            if len(chosen) == self.n_terms:
                break
        if not chosen:
            return Explanation(examples.latent, "", self.method, "ngram",
                               failure="no active tokens in the examples")
        quoted = [f'"{" ".join(g)}"' for g in chosen]
        text = "the tokens " + ", ".join(quoted[:-1]) + (" and " if len(quoted) > 1 else "") + \
            quoted[-1]
        details = {"terms": [{"ngram": " ".join(g), "active_contexts": active_counts[g],
                              "negative_contexts": negative_counts[g],
                              "log_odds": round(score(g), 4)} for g in chosen]}
        return Explanation(examples.latent, text, self.method, "ngram", details=details)

    def _active_ngrams(self, ctx: Context) -> set[tuple[str, ...]]:
        word_of, words = words_of(ctx)
        grams: set[tuple[str, ...]] = set()
        for i in ctx.active_positions(self.fraction):
            w = word_of[i]
            if words[w]:
                grams.add((words[w],))
                if w > 0 and words[w - 1]:
                    grams.add((words[w - 1], words[w]))
        return grams


def words_of(ctx: Context) -> tuple[list[int], list[str]]:
    """Group token pieces into words (a word starts at whitespace or punctuation), so
    sub-word pieces such as "carp" + "ent" are named as the word "carpent…" they form."""
    word_of: list[int] = []
    words: list[str] = []
    for piece in ctx.tokens:
        core = piece.strip()
        starts = (not words or piece[:1].isspace() or not core[:1].isalnum()
                  or not words[-1][-1:].isalnum())
        if starts or not core:
            words.append(core.lower())
        else:
            words[-1] += core.lower()
        word_of.append(len(words) - 1)
    return word_of, words


def _all_ngrams(ctx: Context) -> set[tuple[str, ...]]:
    _, words = words_of(ctx)
    grams: set[tuple[str, ...]] = {(w,) for w in words if w}
    grams.update((a, b) for a, b in itertools.pairwise(words) if a and b)
    return grams
