"""Every prompt the pipeline sends, and the parser of each answer.

Builders return chat messages; parsers take a :class:`Completion` and return a typed value or
raise :class:`AnswerError`, which makes the client retry. The system prompts are constants so a
scripted test server can tell the tasks apart.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from saelab.interp.examples import Context
from saelab.interp.llm import AnswerError, Completion, Messages

EXPLAIN_SYSTEM = (
    "You are a meticulous AI researcher studying one latent feature of a language model. You "
    "are shown text examples where the feature is active; the tokens on which it fires most "
    "are marked <<like this>>, and some examples list each marked token with its activation "
    "on a 0-10 scale. Some examples where the feature is NOT active may follow. Find what the "
    "marked tokens and their contexts have in common. Reply with one concise sentence, on the "
    "last line, in the form:\n[EXPLANATION]: <your explanation>")
DETECTION_SYSTEM = (
    "You judge whether texts fit the explanation of a language-model feature. For each "
    "numbered text, decide whether the feature described by the explanation is present "
    "anywhere in it. Reply with a Python list of 0s and 1s, one per text in order "
    "(1 = present), and nothing else.")
FUZZING_SYSTEM = (
    "You check highlights for the explanation of a language-model feature. In each numbered "
    "text some tokens are marked <<like this>>. Decide for each text whether the marked tokens "
    "are ones the explanation is about (1) or not (0). Reply with a Python list of 0s and 1s, "
    "one per text in order, and nothing else.")
SIMULATION_SYSTEM = (
    "You predict how strongly a language-model feature fires on each token, given the "
    "feature's explanation. The tokens of a text are listed one per line. Reply with one "
    "integer from 0 (not at all) to 10 (maximally) per token, one per line, in the same order "
    "and nothing else.")
GENERATION_SYSTEM = (
    "You write test texts for the explanation of a language-model feature. Write short, "
    "varied texts in which the feature described should fire strongly. Reply with a JSON list "
    "of strings and nothing else.")
SAGE_SYSTEM = (
    "You are an interpretability scientist investigating one feature of a language model "
    "with experiments. You form hypotheses about what makes the feature fire, design probe "
    "texts to test them, read the measured activations and revise. Always reply with a single "
    "JSON object in exactly the requested format.")

TASK_BY_SYSTEM = {EXPLAIN_SYSTEM: "explain", DETECTION_SYSTEM: "detection",
                  FUZZING_SYSTEM: "fuzzing", SIMULATION_SYSTEM: "simulation",
                  GENERATION_SYSTEM: "generation", SAGE_SYSTEM: "sage"}
_REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai")


def _messages(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _check_refusal(text: str) -> None:
    if text.strip().lower().startswith(_REFUSALS):
        raise AnswerError(f"the model declined: {text.strip()[:120]!r}")


def activation_levels(context: Context, reference: float) -> list[int]:
    """Activations on delphi's 0-10 display scale: ceil(10·a / reference)."""
    if reference <= 0:
        return [0] * len(context.activations)
    return [min(10, math.ceil(10 * max(a, 0.0) / reference)) for a in context.activations]


# ------------------------------------------------------------------------------ explain
def explain_messages(contexts: list[Context], negatives: list[Context], *,
                     show_activations: bool = True, fraction: float = 0.3) -> Messages:
    reference = max((c.max_activation for c in contexts), default=0.0)
    parts = []
    for i, ctx in enumerate(contexts, 1):
        line = f"Example {i}: {ctx.marked(fraction=fraction)}"
        if show_activations:
            levels = activation_levels(ctx, reference)
            marks = [f"{ctx.tokens[p].strip()!r} ({levels[p]})"
                     for p in ctx.active_positions(fraction)]
            line += "\nActivations: " + ", ".join(marks)
        parts.append(line)
    if negatives:
        parts.append("Examples where the feature is not active:")
        parts.extend(f"- {c.text.strip()}" for c in negatives)
    return _messages(EXPLAIN_SYSTEM, "\n\n".join(parts))


def parse_explanation(completion: Completion) -> str:
    text = completion.text.strip()
    _check_refusal(text)
    if "[EXPLANATION]:" in text:
        answer = text.rsplit("[EXPLANATION]:", 1)[1].strip().splitlines()
        explanation = answer[0].strip() if answer else ""
    else:
        raise AnswerError("no '[EXPLANATION]:' line in the answer")
    if not explanation or len(explanation.split()) > 60:
        raise AnswerError("the explanation is empty or longer than 60 words")
    return explanation


# -------------------------------------------------------------------- detection, fuzzing
def detection_messages(explanation: str, texts: list[str]) -> Messages:
    body = "\n\n".join(f"Text {i}: {t.strip()}" for i, t in enumerate(texts))
    return _messages(DETECTION_SYSTEM, f"Explanation: {explanation}\n\n{body}")


def fuzzing_messages(explanation: str, marked_texts: list[str]) -> Messages:
    body = "\n\n".join(f"Text {i}: {t}" for i, t in enumerate(marked_texts))
    return _messages(FUZZING_SYSTEM, f"Explanation: {explanation}\n\n{body}")


def binary_list_parser(n: int) -> Any:
    def parse(completion: Completion) -> list[int]:
        text = completion.text.strip()
        _check_refusal(text)
        found = re.findall(r"\[[^\[\]]*\]", text)
        if not found:
            raise AnswerError("no [..] list in the answer")
        try:
            values = json.loads(found[-1])
        except json.JSONDecodeError as err:
            raise AnswerError(f"the list is not valid: {found[-1][:80]!r}") from err
        if not isinstance(values, list) or len(values) != n or \
                any(v not in (0, 1) for v in values):
            raise AnswerError(f"expected a list of {n} zeros and ones, got {found[-1][:80]!r}")
        return [int(v) for v in values]
    return parse


# ------------------------------------------------------------------------- simulation
def token_line(piece: str) -> str:
    shown = piece.strip()
    return shown if shown else "␣"


def simulation_messages(explanation: str, context: Context) -> Messages:
    lines = "\n".join(token_line(t) for t in context.tokens)
    return _messages(SIMULATION_SYSTEM, f"Explanation: {explanation}\n\nTokens:\n{lines}")


def _digit(token: str) -> int | None:
    token = token.strip()
    return int(token) if token.isdigit() and int(token) <= 10 else None


def simulation_parser(n: int) -> Any:
    """Predicted activation per token (0-10). With logprobs, each prediction is the expected
    value over the digit alternatives of the line's first digit token, renormalised over the
    digits among the top alternatives; without, the digit written."""

    def parse(completion: Completion) -> list[float]:
        _check_refusal(completion.text)
        if completion.tokens:
            values = _expected_digits(completion)
        else:
            values = []
            for line in completion.text.strip().splitlines():
                if line.strip():
                    digit = _digit(line)
                    if digit is None:
                        raise AnswerError(f"line {line[:40]!r} is not an integer 0-10")
                    values.append(float(digit))
        if len(values) != n:
            raise AnswerError(f"expected {n} predictions, one per token, got {len(values)}")
        return values
    return parse


def _expected_digits(completion: Completion) -> list[float]:
    values: list[float] = []
    line_done = False
    for token, alternatives in zip(completion.tokens, completion.top_logprobs, strict=True):
        if "\n" in token:
            line_done = False
            continue
        if line_done or _digit(token) is None:
            continue
        weights = [(d, math.exp(lp)) for t, lp in alternatives if (d := _digit(t)) is not None]
        total = sum(w for _, w in weights)
        if total <= 0:
            raise AnswerError(f"no digit among the alternatives of token {token!r}")
        values.append(sum(d * w for d, w in weights) / total)
        line_done = True
    return values


# ------------------------------------------------------------------------- generation
def generation_messages(explanation: str, n: int) -> Messages:
    return _messages(GENERATION_SYSTEM, f"Explanation: {explanation}\n\nWrite {n} texts, each "
                     "one or two sentences long.")


def parse_json(text: str, kind: type) -> Any:
    """The first JSON value of type ``kind`` (list or dict) in the text, code fences allowed."""
    text = re.sub(r"```(?:json)?", "", text).strip()
    _check_refusal(text)
    opener = "[" if kind is list else "{"
    start = text.find(opener)
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            start = text.find(opener, start + 1)
            continue
        if isinstance(value, kind):
            return value
        start = text.find(opener, start + 1)
    raise AnswerError(f"no JSON {kind.__name__} in the answer: {text[:120]!r}")


def generation_parser(n: int) -> Any:
    def parse(completion: Completion) -> list[str]:
        texts = parse_json(completion.text, list)
        texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise AnswerError("the list holds no texts")
        return texts[:n]
    return parse
