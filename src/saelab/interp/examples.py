"""The typed input of every explainer and scorer: a latent's example contexts.

A :class:`Context` is a short window of text as the model saw it: its token pieces (which
concatenate to the exact text) and the latent's activation at every token. A
:class:`LatentExamples` holds, for one latent, the contexts used to *explain* it (the top ones
and a sample across activation quantiles, plus non-activating ones for contrast) and disjoint
held-out contexts used to *score* an explanation (activating and non-activating).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from saelab.config import option

MARK_OPEN, MARK_CLOSE = "<<", ">>"


@dataclass
class Context:
    """Token pieces (``"".join(tokens)`` is the text) and the latent's activation per token."""

    tokens: list[str]
    activations: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise ValueError(f"a context has {len(self.tokens)} tokens but "
                             f"{len(self.activations)} activations; they must match one to one")

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)

    def active_positions(self, fraction: float = 0.3, reference: float | None = None) -> list[int]:
        """Positions whose activation is positive and at least ``fraction`` of ``reference``
        (default: this context's maximum), the delphi rule for marking tokens."""
        top = self.max_activation if reference is None else reference
        if top <= 0:
            return []
        return [i for i, a in enumerate(self.activations) if a > 0 and a >= fraction * top]

    def marked(self, positions: list[int] | None = None, fraction: float = 0.3) -> str:
        """The text with the tokens at ``positions`` (default: the active ones) wrapped in
        ``<<…>>``; adjacent marked tokens share one pair of marks."""
        chosen = set(self.active_positions(fraction) if positions is None else positions)
        out: list[str] = []
        inside = False
        for i, piece in enumerate(self.tokens):
            if i in chosen and not inside:
                stripped = piece.lstrip()
                out.append(piece[: len(piece) - len(stripped)] + MARK_OPEN + stripped)
                inside = True
            elif i not in chosen and inside:
                out.append(MARK_CLOSE + piece)
                inside = False
            else:
                out.append(piece)
        if inside:
            out.append(MARK_CLOSE)
        return "".join(out).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "activations": [round(a, 6) for a in self.activations]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Context:
        return cls(list(data["tokens"]), [float(a) for a in data["activations"]])


@dataclass
class LatentExamples:
    """Everything the pipeline needs to know about one latent.

    ``top`` and ``quantiles`` (activating) and ``negatives`` are shown to explainers;
    ``held_out`` (activating) and ``held_out_negatives`` are never shown and only score.
    """

    latent: int
    top: list[Context]
    quantiles: list[Context] = field(default_factory=list)
    negatives: list[Context] = field(default_factory=list)
    held_out: list[Context] = field(default_factory=list)
    held_out_negatives: list[Context] = field(default_factory=list)
    firing_rate: float | None = None

    @property
    def max_activation(self) -> float:
        return max((c.max_activation for c in self.top + self.quantiles + self.held_out),
                   default=0.0)

    @property
    def train(self) -> list[Context]:
        return self.top + self.quantiles

    def simulation_sample(self, high: int = 4, medium: int = 3, low: int = 3,
                          seed: int = 0) -> list[Context]:
        """SAGE's predictive-accuracy sample from the held-out activating contexts: ``high``
        from the top third by maximum activation, ``medium`` from the middle third and
        ``low`` from the bottom third (fewer when a third is short)."""
        ranked = sorted(self.held_out, key=lambda c: -c.max_activation)
        n = len(ranked)
        thirds = [ranked[: math.ceil(n / 3)], ranked[math.ceil(n / 3): math.ceil(2 * n / 3)],
                  ranked[math.ceil(2 * n / 3):]]
        rng = random.Random(seed)
        out: list[Context] = []
        for part, k in zip(thirds, (high, medium, low), strict=True):
            out.extend(rng.sample(part, min(k, len(part))))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"latent": self.latent, "firing_rate": self.firing_rate,
                **{name: [c.to_dict() for c in getattr(self, name)] for name in _LISTS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentExamples:
        lists = {name: [Context.from_dict(c) for c in data.get(name, [])] for name in _LISTS}
        return cls(latent=int(data["latent"]), firing_rate=data.get("firing_rate"), **lists)


_LISTS = ("top", "quantiles", "negatives", "held_out", "held_out_negatives")


@dataclass
class SamplingConfig:
    """How activating and non-activating contexts are split between explaining and scoring."""

    n_top: int = option(10, "top-activating contexts shown to the explainer")
    n_quantiles: int = option(5, "equal-count activation-rank bins sampled for the explainer")
    per_quantile: int = option(2, "contexts shown from each bin")
    n_negatives: int = option(10, "non-activating contexts shown for contrast")
    n_held_out: int = option(20, "held-out activating contexts for scoring")
    n_held_out_negatives: int = option(20, "held-out non-activating contexts for scoring")
    min_activating: int = option(8, "skip latents active in fewer contexts")
    seed: int = option(0, "seed of every random split and sample")


def split_examples(latent: int, contexts: list[Context], cfg: SamplingConfig,
                   firing_rate: float | None = None) -> LatentExamples | None:
    """Split one latent's contexts into explain and score sets (disjoint); None when fewer than
    ``cfg.min_activating`` contexts activate it.

    Activating contexts are ranked by maximum activation. The top ``n_top`` are shown; the rest
    are dealt at random into a training pool and a held-out pool. ``n_quantiles`` equal-count
    rank bins of the training pool give ``per_quantile`` contexts each (delphi's quantile
    sampling); the held-out set is an even sample across the held-out pool's ranks.
    """
    rng = random.Random(cfg.seed * 1_000_003 + latent)
    active = sorted((c for c in contexts if c.max_activation > 0), key=lambda c: -c.max_activation)
    inactive = [c for c in contexts if c.max_activation <= 0]
    if len(active) < cfg.min_activating:
        return None
    top, rest = active[: cfg.n_top], active[cfg.n_top:]
    if len(rest) < 2:  # too few for a held-out set: hold out part of the top instead
        top, rest = active[: len(active) // 2], active[len(active) // 2:]
    rng.shuffle(rest)
    held_pool = sorted(rest[: len(rest) // 2], key=lambda c: -c.max_activation)
    train_pool = sorted(rest[len(rest) // 2:], key=lambda c: -c.max_activation)
    quantiles = _quantile_sample(train_pool, cfg.n_quantiles, cfg.per_quantile, rng)
    held_out = _even_sample(held_pool, cfg.n_held_out)
    rng.shuffle(inactive)
    # Scoring needs negatives most: when there are too few for both sets, they are shared
    # half and half (held-out first).
    n_train_neg = cfg.n_negatives
    if len(inactive) < cfg.n_negatives + cfg.n_held_out_negatives:
        n_train_neg = min(cfg.n_negatives, len(inactive) // 2)
    negatives = inactive[:n_train_neg]
    held_neg = inactive[n_train_neg: n_train_neg + cfg.n_held_out_negatives]
    return LatentExamples(latent, top, quantiles, negatives, held_out, held_neg, firing_rate)


def _quantile_sample(ranked: list[Context], bins: int, per_bin: int,
                     rng: random.Random) -> list[Context]:
    if not ranked or bins <= 0:
        return []
    out: list[Context] = []
    edges = [round(i * len(ranked) / bins) for i in range(bins + 1)]
    for lo, hi in itertools.pairwise(edges):
        part = ranked[lo:hi]
        out.extend(rng.sample(part, min(per_bin, len(part))))
    return out


def _even_sample(ranked: list[Context], n: int) -> list[Context]:
    if len(ranked) <= n:
        return list(ranked)
    return [ranked[round(i * (len(ranked) - 1) / max(1, n - 1))] for i in range(n)]


_SYNTHETIC_WORDS = ["cat", "river", "music", "green", "seven", "doctor"]
_FILLER = ["the", "a", "of", "and", "to", "in", "is", "was", "he", "she", "it", "they", "we", "on", "at", "by", "with", "from", "this", "that", "old", "new", "big", "small", "day", "night", "road", "house", "tree"]


def synthetic_examples(latent: int, seed: int = 0, n: int = 10) -> LatentExamples:
    """Made-up examples with a known answer, for tests, benchmarks and dry runs: latent L fires
    (activation 1-10) on one word, ``_SYNTHETIC_WORDS[L % 6]``, inside filler sentences."""
    rng = random.Random(seed * 100 + latent)
    word = _SYNTHETIC_WORDS[latent % len(_SYNTHETIC_WORDS)]
    others = [w for w in _SYNTHETIC_WORDS if w != word]

    def sentence(target: str, strength: float) -> Context:
        tokens = [" " + rng.choice(_FILLER) for _ in range(10)]
        acts = [0.0] * len(tokens)
        spot = rng.randrange(1, len(tokens) - 1)
        tokens[spot], acts[spot] = " " + target, strength
        tokens[0] = tokens[0].strip().capitalize()
        return Context(tokens, acts)

    def pos(k: int) -> list[Context]:
        return [sentence(word, rng.uniform(1.0, 10.0)) for _ in range(k)]

    def neg(k: int) -> list[Context]:
        return [sentence(rng.choice(others), 0.0) for _ in range(k)]

    return LatentExamples(latent, top=pos(n), quantiles=pos(n // 2), negatives=neg(n),
                          held_out=pos(n), held_out_negatives=neg(n), firing_rate=0.01)
