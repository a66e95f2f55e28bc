"""Explain SAE latents automatically, and score the explanations.

Stages (delphi's pipeline): :mod:`examples` (a latent's contexts, split into explain and
held-out sets; :func:`probe.collect_examples` gathers them from a corpus) → :mod:`explainers`
(LLM, offline n-gram) or :mod:`sage` (the agentic explainer, probing the real model and SAE
through :mod:`probe`) → :mod:`scorers` (detection, fuzzing, simulation, generation, offline
embedding) → :mod:`pipeline` (concurrent, resumable, per-latent results). Every LLM call goes
through :mod:`llm` (any OpenAI-compatible server); :mod:`loopback` is a real chat-completions
server on 127.0.0.1 with scripted answers for tests, benchmarks and dry runs.
"""

from saelab.interp.examples import Context, LatentExamples, SamplingConfig, split_examples
from saelab.interp.explainers import Explanation, LLMExplainer, NgramExplainer
from saelab.interp.llm import AnswerError, Completion, LLMClient, LLMConfig, LLMFailure
from saelab.interp.pipeline import FolderSink, Pipeline, RunSummary
from saelab.interp.probe import ActivationProbe, CollectConfig, collect_examples
from saelab.interp.sage import SageConfig, SageExplainer, SageResult
from saelab.interp.scorers import (
    DetectionScorer,
    EmbeddingScorer,
    FuzzingScorer,
    GenerationScorer,
    Score,
    SimulationScorer,
)

__all__ = ["ActivationProbe", "AnswerError", "CollectConfig", "Completion", "Context",
           "DetectionScorer", "EmbeddingScorer", "Explanation", "FolderSink", "FuzzingScorer",
           "GenerationScorer", "LLMClient", "LLMConfig", "LLMExplainer", "LLMFailure",
           "LatentExamples", "NgramExplainer", "Pipeline", "RunSummary", "SageConfig",
           "SageExplainer", "SageResult", "SamplingConfig", "Score", "SimulationScorer",
           "collect_examples", "split_examples"]
