"""Synthetic latent examples for the interp tests: latent L fires on the word WORDS[L]."""

from __future__ import annotations

import random

from saelab.interp.examples import Context, LatentExamples

WORDS = ["cat", "river", "music", "green", "seven", "doctor"]
FILLER = ("the a of and to in is was he she it they we on at by with from this that "
          "old new big small day night road house tree").split()


def sentence(rng: random.Random, word: str | None, strength: float = 0.0) -> Context:
    tokens = [" " + rng.choice(FILLER) for _ in range(10)]
    acts = [0.0] * len(tokens)
    if word is not None:
        spot = rng.randrange(1, len(tokens) - 1)
        tokens[spot] = " " + word
        acts[spot] = strength
    tokens[0] = tokens[0].strip().capitalize()
    return Context(tokens, acts)


def synthetic_examples(latent: int, seed: int = 0, n: int = 10) -> LatentExamples:
    rng = random.Random(seed * 100 + latent)
    word = WORDS[latent % len(WORDS)]
    others = [w for w in WORDS if w != word]

    def pos(k: int) -> list[Context]:
        return [sentence(rng, word, rng.uniform(1.0, 10.0)) for _ in range(k)]

    def neg(k: int) -> list[Context]:
        return [sentence(rng, rng.choice(others)) for _ in range(k)]

    return LatentExamples(latent, top=pos(n), quantiles=pos(n // 2), negatives=neg(n),
                          held_out=pos(n), held_out_negatives=neg(n), firing_rate=0.01)
