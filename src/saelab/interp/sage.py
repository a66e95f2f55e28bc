"""SAGE, the agentic explainer (Han et al. 2025, arXiv 2511.20820): a state machine in which
an LLM forms hypotheses from a latent's exemplars, designs probe texts with expected
activations, has them run through the real model and SAE, and refines, confirms or rejects
until the stopping rule holds; then it reviews every hypothesis and concludes, possibly with a
multi-part (polysemantic) explanation.

States: INIT → GET_EXEMPLARS → ANALYZE_EXEMPLARS → rounds of PARALLEL_HYPOTHESIS_TESTING (per
active hypothesis DESIGN_TEST → RUN_TEST → ANALYZE_RESULT → UPDATE_HYPOTHESIS) →
REVIEW_ALL_HYPOTHESES → FINAL_CONCLUSION. ANALYZE_RESULT and UPDATE_HYPOTHESIS come from one
LLM answer and are recorded as two steps. Stopping (the paper's defaults): conclude once
round ≥ ``min_rounds`` (12), no hypothesis is pending and at least ``min_tests`` (8) tests have
run (stop reason "converged", or "all_rejected" when nothing was confirmed); always stop
after ``max_rounds`` (14). A round tests every pending hypothesis; when none is
pending before ``min_rounds`` the confirmed ones are stress-tested again; when every hypothesis
was rejected the agent proposes new ones from the exemplars and the evidence so far.
Every step (state, round, prompt, raw answer, parsed content, measured activations) is kept in
a JSON transcript.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from saelab.config import option
from saelab.interp.examples import LatentExamples
from saelab.interp.explainers import Explanation, now
from saelab.interp.llm import AnswerError, Completion, LLMClient, LLMFailure, Messages
from saelab.interp.probe import ActivationProbe
from saelab.interp.prompts import SAGE_SYSTEM, parse_json

STATES = ("INIT", "GET_EXEMPLARS", "ANALYZE_EXEMPLARS", "PARALLEL_HYPOTHESIS_TESTING",
          "DESIGN_TEST", "RUN_TEST", "ANALYZE_RESULT", "UPDATE_HYPOTHESIS",
          "REVIEW_ALL_HYPOTHESES", "FINAL_CONCLUSION")
VERDICTS = {"confirm": "confirmed", "reject": "rejected", "refine": "pending"}


@dataclass
class SageConfig:
    """The agent's budget; the defaults are the paper's."""

    n_exemplars: int = option(10, "top-activating exemplars shown to the agent")
    n_hypotheses: int = option(3, "hypotheses proposed from the exemplars")
    probes_per_test: int = option(4, "probe texts per hypothesis test")
    max_rounds: int = option(14, "stop after this many rounds")
    min_rounds: int = option(12, "conclude no earlier than this round")
    min_tests: int = option(8, "conclude only after this many hypothesis tests")

    def validate(self) -> None:
        if self.min_rounds > self.max_rounds:
            raise ValueError(f"min_rounds ({self.min_rounds}) must not exceed max_rounds "
                             f"({self.max_rounds})")
        if min(self.n_exemplars, self.n_hypotheses, self.probes_per_test, self.max_rounds) < 1:
            raise ValueError("SAGE's counts must all be at least 1")


@dataclass
class Hypothesis:
    id: int
    text: str
    status: str = "pending"  # pending | confirmed | rejected
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SageResult:
    explanation: Explanation
    transcript: dict[str, Any]


def _user(task: str, body: str, reply_format: str) -> Messages:
    return [{"role": "system", "content": SAGE_SYSTEM},
            {"role": "user", "content": f"TASK: {task}\n\n{body}\n\nReply format: {reply_format}"}]


class SageExplainer:
    """The agent for one latent at a time: ``await explain(examples)``."""

    method = "sage"

    def __init__(self, client: LLMClient, probe: ActivationProbe,
                 cfg: SageConfig | None = None) -> None:
        self.client, self.probe = client, probe
        self.cfg = cfg or SageConfig()
        self.cfg.validate()

    async def explain(self, examples: LatentExamples) -> Explanation:
        return (await self.run(examples)).explanation

    async def run(self, examples: LatentExamples) -> SageResult:
        """The transcript is returned even when a step fails; the explanation then carries
        the failure and the transcript ends with a FAILED step."""
        session = _Session(self, examples)
        try:
            return await session.run()
        except (LLMFailure, AnswerError) as err:
            session.record("FAILED", error=str(err))
            transcript = session.transcript("", {}, f"failed: {err}")
            return SageResult(Explanation(examples.latent, "", "sage", self.client.cfg.model,
                                          failure=str(err)), transcript)


class _Session:
    def __init__(self, agent: SageExplainer, examples: LatentExamples) -> None:
        self.agent, self.examples = agent, examples
        self.cfg = agent.cfg
        self.latent = examples.latent
        self.steps: list[dict[str, Any]] = []
        self.hypotheses: list[Hypothesis] = []
        self.round = 0
        self.tests_run = 0
        self.reference = examples.max_activation or 1.0

    def record(self, state: str, **content: Any) -> dict[str, Any]:
        step = {"step": len(self.steps), "state": state, "round": self.round, "time": now(),
                **content}
        self.steps.append(step)
        return step

    async def ask(self, state: str, messages: Messages, kind: type, **extra: Any) -> Any:
        def parse(c: Completion) -> tuple[Any, str]:
            return parse_json(c.text, kind), c.text
        value, raw = await self.agent.client.complete(messages, parse, temperature=0.0)
        self.record(state, prompt=messages[-1]["content"], answer=raw, parsed=value, **extra)
        return value

    async def run(self) -> SageResult:
        self.record("INIT", latent=self.latent, config=self.cfg.__dict__.copy(),
                    model=self.agent.client.cfg.model)
        exemplars = sorted(self.examples.train, key=lambda c: -c.max_activation)
        exemplars = exemplars[: self.cfg.n_exemplars]
        shown = [{"text": c.marked(), "max_activation": c.max_activation} for c in exemplars]
        self.record("GET_EXEMPLARS", exemplars=shown)
        self.exemplar_text = "\n".join(
            f"{i + 1}. (max {e['max_activation']:.3g}) {e['text']}" for i, e in enumerate(shown))
        await self.propose()
        stop_reason = ""
        while not stop_reason:
            self.round += 1
            active = self.active_hypotheses()
            if not active:
                await self.propose()
                active = self.active_hypotheses()
            self.record("PARALLEL_HYPOTHESIS_TESTING", hypotheses=[h.id for h in active])
            await asyncio.gather(*(self.test(h) for h in active))
            stop_reason = self.stop_reason()
        self.record("PARALLEL_HYPOTHESIS_TESTING", stop=stop_reason, tests_run=self.tests_run)
        review = await self.ask("REVIEW_ALL_HYPOTHESES", _user(
            "REVIEW_ALL_HYPOTHESES", self.evidence(),
            '{"review": "<what the evidence shows for each hypothesis>"}'), dict)
        final = await self.ask("FINAL_CONCLUSION", _user(
            "FINAL_CONCLUSION", self.evidence() + f"\n\nYour review: {review.get('review', '')}",
            '{"explanation": "<one sentence>", "parts": ["<one part per distinct behaviour>"], '
            '"polysemantic": true|false}'), dict)
        text = str(final.get("explanation", "")).strip()
        if not text:
            raise AnswerError("the final conclusion has no explanation")
        transcript = self.transcript(text, final, stop_reason)
        parts = final.get("parts") or []
        explanation = Explanation(self.latent, text, "sage", self.agent.client.cfg.model,
                                  details={"parts": parts, "rounds": self.round,
                                           "tests_run": self.tests_run,
                                           "stop_reason": stop_reason})
        return SageResult(explanation, transcript)

    def transcript(self, text: str, final: dict[str, Any], stop_reason: str) -> dict[str, Any]:
        return {"latent": self.latent, "method": "sage", "model": self.agent.client.cfg.model,
                "explanation": text, "rounds": self.round, "tests_run": self.tests_run,
                "stop_reason": stop_reason, "hypotheses": [h.__dict__ for h in self.hypotheses],
                "final": final, "steps": self.steps}

    def active_hypotheses(self) -> list[Hypothesis]:
        pending = [h for h in self.hypotheses if h.status == "pending"]
        if pending:
            return pending
        return [h for h in self.hypotheses if h.status == "confirmed"]

    def stop_reason(self) -> str:
        if self.round >= self.cfg.max_rounds:
            return "max_rounds"
        pending = any(h.status == "pending" for h in self.hypotheses)
        if self.round >= self.cfg.min_rounds and not pending and \
                self.tests_run >= self.cfg.min_tests:
            confirmed = any(h.status == "confirmed" for h in self.hypotheses)
            return "converged" if confirmed else "all_rejected"
        return ""

    async def propose(self) -> None:
        body = f"Top activating exemplars (active tokens marked <<…>>):\n{self.exemplar_text}"
        if self.hypotheses:
            body += "\n\nEvidence so far (all hypotheses were rejected):\n" + self.evidence()
        value = await self.ask("ANALYZE_EXEMPLARS", _user(
            "ANALYZE_EXEMPLARS", body + f"\n\nPropose {self.cfg.n_hypotheses} distinct "
            "hypotheses about what makes the feature fire.",
            '{"hypotheses": ["<hypothesis>", ...]}'), dict)
        texts = [str(t).strip() for t in value.get("hypotheses", []) if str(t).strip()]
        if not texts:
            raise AnswerError("no hypotheses in the answer")
        for text in texts[: self.cfg.n_hypotheses]:
            self.hypotheses.append(Hypothesis(len(self.hypotheses), text))

    async def test(self, h: Hypothesis) -> None:
        design = await self.ask("DESIGN_TEST", _user(
            "DESIGN_TEST", f"Hypothesis {h.id}: {h.text}\n\nExemplars:\n{self.exemplar_text}"
            + self.history_text(h) + f"\n\nWrite {self.cfg.probes_per_test} probe texts that "
            "test this hypothesis, some where it predicts strong activation and some where it "
            "predicts none, each with the expected activation on a 0-10 scale.",
            '{"probes": [{"text": "<probe>", "expected": <0-10>}, ...]}'), dict,
            hypothesis=h.id)
        probes = [p for p in design.get("probes", []) if isinstance(p, dict)
                  and str(p.get("text", "")).strip()][: self.cfg.probes_per_test]
        if not probes:
            raise AnswerError("the test design has no probe texts")
        texts = [str(p["text"]) for p in probes]
        runs = await asyncio.to_thread(self.agent.probe.run, texts, [self.latent])
        results = []
        for p, r in zip(probes, runs, strict=True):
            acts = r.activations[self.latent]
            results.append({"text": r.text, "expected": p.get("expected"), "tokens": r.tokens,
                            "activations": acts, "max_activation": max(acts, default=0.0),
                            "level": round(10 * max(acts, default=0.0) / self.reference, 2)})
        self.tests_run += 1
        self.record("RUN_TEST", hypothesis=h.id, results=results)
        table = "\n".join(
            f"- expected {x['expected']}, measured {x['level']} (0-10 scale, raw max "
            f"{x['max_activation']:.3g}): {x['text']}" for x in results)
        verdict = await self.ask("ANALYZE_RESULT", _user(
            "ANALYZE_RESULT", f"Hypothesis {h.id}: {h.text}\n\nMeasured activations:\n{table}",
            '{"analysis": "<what the results show>", "verdict": "confirm"|"reject"|"refine", '
            '"hypothesis": "<refined hypothesis when refining>"}'), dict, hypothesis=h.id)
        choice = str(verdict.get("verdict", "")).lower()
        if choice not in VERDICTS:
            raise AnswerError(f"verdict {choice!r} is not confirm, reject or refine")
        before = h.text
        h.status = VERDICTS[choice]
        if choice == "refine" and str(verdict.get("hypothesis", "")).strip():
            h.text = str(verdict["hypothesis"]).strip()
        h.history.append({"round": self.round, "verdict": choice, "before": before,
                          "analysis": verdict.get("analysis", ""), "results": [
                              {"text": x["text"], "expected": x["expected"],
                               "level": x["level"]} for x in results]})
        self.record("UPDATE_HYPOTHESIS", hypothesis=h.id, verdict=choice, status=h.status,
                    before=before, after=h.text)

    def history_text(self, h: Hypothesis) -> str:
        if not h.history:
            return ""
        lines = [f"round {e['round']}: {e['verdict']} — {e['analysis']}" for e in h.history]
        return "\n\nEarlier tests of this hypothesis:\n" + "\n".join(lines)

    def evidence(self) -> str:
        return json.dumps([{"id": h.id, "hypothesis": h.text, "status": h.status,
                            "tests": h.history} for h in self.hypotheses], indent=1)
