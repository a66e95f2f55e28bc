"""The feature store as the pipeline's input and output.

:func:`examples_from_store` turns a latent's stored windows (top, quantile-sampled and random)
into :class:`LatentExamples`; :class:`StoreSink` writes each finished latent's explanation,
scores and SAGE transcript into the store's ``explanations``, ``explanation_scores`` and
``transcripts`` tables (where the explorer shows and searches them), and keeps the per-latent
JSON records of :class:`FolderSink` next to it for resuming and for failures (the store only
holds results that exist). Rows carry the run's name in their provenance; rewriting a latent
replaces only that run's rows, so other runs and user rows are never touched.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saelab.features import FeatureStore
from saelab.interp.examples import Context, LatentExamples, SamplingConfig, split_examples
from saelab.interp.pipeline import FolderSink

#: the headline metric name of each scorer, and extra detail values stored as their own rows
METRICS = {"detection": ("balanced_accuracy", ("f1",)), "fuzzing": ("balanced_accuracy", ("f1",)),
           "simulation": ("pearson_r", ()), "generation": ("success_rate", ()),
           "embedding": ("auroc", ())}


def _pieces(texts: list[str]) -> list[str]:
    """Token display strings → pieces that concatenate to readable text. Byte-level
    tokenizers show leading spaces already; WordPiece shows ``##`` continuations."""
    if any(t.startswith((" ", "\n")) for t in texts):
        return texts
    out = []
    for i, t in enumerate(texts):
        if t.startswith("##"):
            out.append(t[2:])
        elif i == 0 or (len(t) == 1 and not t.isalnum() and t not in "([\"'"):
            out.append(t)
        else:
            out.append(" " + t)
    return out


def store_context(example: dict[str, Any]) -> Context:
    """A stored window without its uncounted positions (NaN activation: BOS and the like)."""
    keep = [i for i, a in enumerate(example["acts"]) if a is not None]
    pieces = _pieces([example["tokens"][i] for i in keep])
    return Context(pieces, [float(example["acts"][i]) for i in keep])


def examples_from_store(store: FeatureStore, latents: Sequence[int],
                        sampling: SamplingConfig | None = None) -> dict[int, LatentExamples]:
    """Each latent's stored windows split into explain and held-out sets (see
    :func:`split_examples`); latents with too few activating windows are left out."""
    sampling = sampling or SamplingConfig()
    out = {}
    for latent in latents:
        if not store.has(latent):
            raise ValueError(f"latent {latent} is outside this SAE (0..{store.n_latents - 1})")
        stored = store.examples(latent)
        contexts = [store_context(e) for kind in ("top", "quantile", "random")
                    for e in stored[kind]]
        summary = store.summary(latent) or {}
        ex = split_examples(latent, contexts, sampling, summary.get("density"))
        if ex is not None:
            out[latent] = ex
    return out


class StoreSink(FolderSink):
    """Per-latent JSON under ``folder`` (resume state, failures) plus rows in the store."""

    def __init__(self, store_path: str | Path, folder: str | Path, run_name: str) -> None:
        super().__init__(folder)
        self.store_path = Path(store_path)
        self.run_name = run_name

    def write(self, latent: int, record: dict[str, Any],
              transcript: dict[str, Any] | None) -> None:
        super().write(latent, record, transcript)
        conn = sqlite3.connect(self.store_path, timeout=60)
        try:
            with conn:
                self._replace(conn, latent, record, transcript)
        finally:
            conn.close()

    def _replace(self, conn: sqlite3.Connection, latent: int, record: dict[str, Any],
                 transcript: dict[str, Any] | None) -> None:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM transcripts WHERE latent = ? AND "
                     "json_extract(content, '$.run') = ?", (latent, self.run_name))
        old = [r[0] for r in conn.execute(
            "SELECT id FROM explanations WHERE latent = ? AND json_extract(provenance, '$.run') = ?",
            (latent, self.run_name))]
        for oid in old:
            conn.execute("DELETE FROM explanation_scores WHERE explanation_id = ?", (oid,))
            conn.execute("DELETE FROM transcripts WHERE explanation_id = ?", (oid,))
            conn.execute("DELETE FROM explanations WHERE id = ?", (oid,))
        expl = record.get("explanation") or {}
        explanation_id = None
        if expl.get("text") and not expl.get("failure"):
            provenance = {"run": self.run_name, "details": expl.get("details", {}),
                          "created": expl.get("created")}
            cur = conn.execute(
                "INSERT INTO explanations (latent, text, method, explainer_model, provenance) "
                "VALUES (?, ?, ?, ?, ?)", (latent, expl["text"], expl["method"],
                                           expl.get("model", ""), json.dumps(provenance)))
            explanation_id = cur.lastrowid
            for name, score in record.get("scores", {}).items():
                if score.get("failure") or score.get("value") is None:
                    continue
                metric, extras = METRICS.get(name, ("score", ()))
                details = score.get("details", {})
                n = details.get("n") or details.get("n_tokens") or \
                    (details.get("n_positive", 0) + details.get("n_negative", 0)) or \
                    len(details.get("texts", [])) or None
                rows = [(metric, score["value"])] + [
                    (extra, details[extra]) for extra in extras
                    if isinstance(details.get(extra), float) and not math.isnan(details[extra])]
                for metric_name, value in rows:
                    conn.execute(
                        "INSERT INTO explanation_scores (explanation_id, scorer, metric, value, "
                        "n_examples, scorer_model, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (explanation_id, name, metric_name, value, n, score.get("model", ""),
                         json.dumps(details)))
        if transcript is not None:
            conn.execute("INSERT INTO transcripts (explanation_id, latent, kind, content) "
                         "VALUES (?, ?, 'sage', ?)", (explanation_id, latent, json.dumps(
                             {**transcript, "run": self.run_name})))
