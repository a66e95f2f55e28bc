"""Matched L0: set each SAE's sparsity knob so that its measured L0 lands on a target.

Most SAE comparisons (concept metrics, reconstruction, interpretability) move with L0, so a fair
table compares architectures at one L0. TopK-family SAEs take L0 as their knob (``k``), though
BatchTopK's inference threshold can still land off k; the penalty SAEs (ReLU, p-annealing, Gated,
JumpReLU) reach an L0 only through a coefficient whose effect depends on the data and the
training length. :func:`match_l0` searches every SAE's knob at once, in rounds:

1. train every SAE not yet matched at its current knob value (one training pass per round, all
   of them side by side), and measure its L0 on the caller's evaluation rows;
2. an SAE is *matched* when |L0 − target| ≤ tolerance · target;
3. otherwise :func:`propose` gives the next value: the log-log secant through the two tried
   values nearest the target (a power-law step, L0 ∝ k or L0 ∝ 1/coefficient, while there is
   only one), kept strictly inside the bracket once values on both sides of the target are
   known (geometric bisection when the secant leaves it); integer knobs round, and stop when the
   target falls between two neighbouring integers.

The closest SAE found is returned for every name, with its knob, L0 and history, and
``matched = False`` when the rounds ran out (callers must report such rows as unmatched).
This differs from ``saelab.search.l0`` (which *chooses* an L0 by the elbow of the correct-L0
proxies) and from auto-L0 (which learns one during training): here the L0 is given.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saelab.architectures.base import SAE
from saelab.config import ConfigError


@dataclass(frozen=True)
class Knob:
    """The config option that sets an architecture's L0 and which way it moves it."""

    key: str
    raises_l0: bool  # True: a larger value gives a larger L0 (k); False: a penalty coefficient
    integer: bool = False
    minimum: float = 0.0


KNOBS: dict[str, Knob] = {
    **{arch: Knob("k", True, integer=True, minimum=1)
       for arch in ("topk", "batchtopk", "matryoshka", "ordered")},
    **{arch: Knob("l1_coefficient", False) for arch in ("relu", "panneal", "gated",
                                                         "gated_panneal")},
    "jumprelu": Knob("l0_coefficient", False),
}


def knob_for(architecture: str) -> Knob:
    if architecture not in KNOBS:
        raise ConfigError(f"no L0 knob known for architecture {architecture!r}; matched L0 "
                          f"supports {sorted(KNOBS)}")
    return KNOBS[architecture]


@dataclass
class L0Match:
    """The outcome for one SAE: the knob value kept, its L0, and every value tried."""

    name: str
    key: str
    value: float
    l0: float
    target: float
    matched: bool
    history: list[tuple[float, float]] = field(default_factory=list)  # (value, L0) per round
    sae: SAE | None = None

    @property
    def relative_error(self) -> float:
        return (self.l0 - self.target) / self.target

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "value": self.value, "l0": self.l0,
                "target": self.target, "matched": self.matched,
                "relative_error": self.relative_error,
                "history": [list(h) for h in self.history]}


def within(l0: float, target: float, tolerance: float) -> bool:
    return math.isfinite(l0) and abs(l0 - target) <= tolerance * target


def propose(knob: Knob, history: list[tuple[float, float]], target: float) -> float | None:
    """The next knob value to try after ``history`` ((value, L0) pairs), or None when no
    untried value can do better (an integer knob whose neighbours bracket the target)."""
    if not history:
        raise ValueError("propose needs at least one tried value")
    tried = {v for v, _ in history}
    # the best values on each side of the target (in L0)
    below = [(v, l0) for v, l0 in history if l0 < target]
    above = [(v, l0) for v, l0 in history if l0 >= target]
    lo = max(below, key=lambda h: h[1]) if below else None
    hi = min(above, key=lambda h: h[1]) if above else None
    guess = _extrapolate(knob, history, target)
    if lo is not None and hi is not None:  # stay strictly inside the bracket
        a, b = sorted((lo[0], hi[0]))
        if not a < guess < b:
            guess = math.sqrt(a * b) if a > 0 else (a + b) / 2
    guess = max(guess, knob.minimum if knob.minimum > 0 else 1e-12)
    if not knob.integer:
        if guess in tried and (lo is None or hi is None):
            # L0 did not respond to the step (e.g. a run too short to move it): go past the
            # tried values rather than train the same value again
            up = (lo is not None) == knob.raises_l0
            guess = max(tried) * 16 if up else min(tried) / 16
        return guess
    if lo is not None and hi is not None:  # an untried integer strictly inside the bracket
        a, b = sorted((int(lo[0]), int(hi[0])))
        inside = [k for k in range(a + 1, b) if k not in tried]
        return float(min(inside, key=lambda k: abs(k - guess))) if inside else None
    candidate = max(int(knob.minimum), round(guess))
    if candidate in tried:  # step past the tried values in the direction that moves L0 on
        up = (lo is not None) == knob.raises_l0
        candidate = int(max(tried) + 1 if up else min(tried) - 1)
    return float(candidate) if candidate >= knob.minimum else None


def values_for_l0s(knob: Knob, history: list[tuple[float, float]], targets: list[float],
                   tolerance: float) -> list[float]:
    """A knob value for each L0 in ``targets`` from the (value, L0) pairs a search measured,
    e.g. a sweep around a matched value: a tried value whose L0 is within ``tolerance`` of the
    target when there is one, else :func:`propose`'s step for that target (the secant through
    the tried values nearest it, inside their bracket). Values are guesses, not measurements:
    the caller measures the L0 each one lands at. An integer knob with no untried value nearer
    a target gives the nearest tried value."""
    out = []
    for target in targets:
        near = [(abs(math.log(max(l0, 1e-12) / target)), v) for v, l0 in history
                if within(l0, target, tolerance)]
        if near:
            out.append(min(near)[1])
            continue
        guess = propose(knob, history, target)
        if guess is None:
            guess = min(history, key=lambda h: abs(math.log(max(h[1], 1e-12) / target)))[0]
        out.append(guess)
    return out


def _extrapolate(knob: Knob, history: list[tuple[float, float]], target: float) -> float:
    """The secant step in log-log: from the point nearest the target along a power law
    L0 ∝ value^s, s from the two nearest points when they give a slope of the knob's sign (else
    s = ±1: L0 ∝ k, or L0 ∝ 1/coefficient); the value moves by at most a factor of 16."""
    sign = 1.0 if knob.raises_l0 else -1.0
    points = sorted({(v, l0) for v, l0 in history if v > 0 and l0 > 0},
                    key=lambda h: abs(math.log(h[1] / target)))
    if not points:  # L0 of 0: the SAE is dead at this value; move the knob to raise L0 a lot
        value = history[-1][0]
        return value * (16.0 if knob.raises_l0 else 1 / 16)
    value, l0 = points[0]
    slope = sign
    if len(points) >= 2 and points[1][0] != value and points[1][1] != l0:
        fitted = math.log(l0 / points[1][1]) / math.log(value / points[1][0])
        if fitted * sign > 0:
            slope = sign * min(10.0, max(0.1, abs(fitted)))
    factor = math.exp(math.log(target / l0) / slope)
    guess = value * min(16.0, max(1 / 16, factor))
    if guess == value:
        guess = value * (2.0 if (l0 < target) == knob.raises_l0 else 0.5)
    return guess


def match_l0(configs: dict[str, dict[str, Any]],
             train_round: Callable[[int, dict[str, dict[str, Any]]], dict[str, SAE]],
             measure_l0: Callable[[SAE], float], target: float, tolerance: float = 0.1,
             max_rounds: int = 5, progress: bool = True,
             knobs: dict[str, Knob] | None = None) -> dict[str, L0Match]:
    """Search every SAE's knob until its L0 is within ``tolerance`` of ``target``.

    ``configs`` maps a name to an SAE config dict with ``architecture`` and a starting knob
    value (the architecture's default is used when absent). ``train_round(round, settings)``
    trains the given configs side by side and returns the SAEs by name; ``measure_l0`` gives an
    SAE's L0 on the evaluation rows. ``knobs`` overrides the knob of some names (e.g. JumpReLU's
    ``threshold_init`` in runs too short for its threshold to travel: under Adam it moves about
    lr per step whatever the L0 coefficient).
    """
    if target <= 0 or not 0 < tolerance < 1:
        raise ConfigError(f"need target L0 > 0 and 0 < tolerance < 1, got {target} and "
                          f"{tolerance}")
    knobs = {name: (knobs or {}).get(name) or knob_for(str(c.get("architecture", "")))
             for name, c in configs.items()}
    best: dict[str, L0Match] = {}
    current = {name: dict(c) for name, c in configs.items()}
    pending = list(configs)
    for round_index in range(max_rounds):
        if not pending:
            break
        settings = {name: current[name] for name in pending}
        trained = train_round(round_index, settings)
        still = []
        for name in pending:
            knob = knobs[name]
            value = float(settings[name].get(knob.key, _default(settings[name], knob)))
            l0 = float(measure_l0(trained[name]))
            history = (best[name].history if name in best else []) + [(value, l0)]
            previous = best.get(name)
            if previous is None or abs(l0 - target) < abs(previous.l0 - target):
                best[name] = L0Match(name, knob.key, value, l0, target,
                                     within(l0, target, tolerance), history, trained[name])
            else:
                previous.history = history
            if progress:
                print(f"match-l0 round {round_index + 1}: {name} {knob.key}={value:.4g} -> "
                      f"L0 {l0:.2f} (target {target:g} ± {tolerance:.0%})", file=sys.stderr,
                      flush=True)
            if best[name].matched:
                continue
            nxt = propose(knob, history, target)
            if nxt is None:
                continue
            current[name] = {**current[name], knob.key: int(nxt) if knob.integer else nxt}
            still.append(name)
        pending = still
    return best


def _default(config: dict[str, Any], knob: Knob) -> float:
    from saelab.registry import config_from_dict

    return float(getattr(config_from_dict(dict(config)), knob.key))
