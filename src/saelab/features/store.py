"""Read a feature store: one latent's page data, lists, search, labels.

A :class:`FeatureStore` is safe to share between threads: each thread gets its own SQLite
connection. Opening it against an SAE checks the SAE's fingerprint, so a store never shows one
SAE's examples for another SAE's weights.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from saelab.architectures.base import SAE
from saelab.features.build import StoreError, read_meta
from saelab.features.collect import log_rebin
from saelab.features.examples import KINDS
from saelab.features.schema import SCHEMA_VERSION, STORE_NAME, create_schema, fingerprint

SortKey = Literal["id", "density", "max_act", "mean_act"]
SORT_KEYS: tuple[SortKey, ...] = ("id", "density", "max_act", "mean_act")


def resolve_store(path: str | Path) -> Path:
    """The ``features.db`` of a store folder, an SAE folder holding ``features/``, or a file."""
    path = Path(path)
    for candidate in (path, path / STORE_NAME, path / "features" / STORE_NAME):
        if candidate.is_file():
            return candidate
    raise StoreError(f"no feature store at {path}: build one with `saelab features build "
                     f"SAE_DIR` (it writes SAE_DIR/features/{STORE_NAME})")


class FeatureStore:
    """Queries over one store file (read-mostly; labels can be added)."""

    def __init__(self, path: str | Path, sae: SAE | None = None) -> None:
        self.path = resolve_store(path)
        self.meta = read_meta(self.path)
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema version {version}; this saelab "
                             f"reads version {SCHEMA_VERSION}: rebuild it with `saelab features "
                             "build SAE_DIR --rebuild` and the source it was built from "
                             "(labels, explanations, scores and transcripts are kept)")
        if sae is not None:
            self.check_sae(sae)
        self._local = threading.local()
        self.n_latents = int(self.meta["sae"]["d_sae"])
        self.token_text = dict(self._conn().execute("SELECT id, text FROM tokens").fetchall())
        # a list indexed by token id: the fastest look-up for a page's few thousand tokens
        size = max(self.token_text, default=-1) + 1
        self._texts = [self.token_text.get(i, f"<{i}>") for i in range(size)]

    def check_sae(self, sae: SAE) -> None:
        """Raise StoreError unless the store was built for exactly these weights."""
        if fingerprint(sae) != self.meta.get("fingerprint"):
            raise StoreError(f"{self.path} was built for other SAE weights "
                             f"({self.meta.get('sae_path') or 'unknown folder'}); build a store "
                             "for this SAE with `saelab features build`")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            create_schema(conn)  # adds tables a newer saelab knows of (IF NOT EXISTS)
            self._local.conn = conn
        return conn

    # ------------------------------------------------------------------ one latent

    def has(self, latent: int) -> bool:
        return 0 <= latent < self.n_latents

    def summary(self, latent: int) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM latents WHERE id = ?", (latent,)).fetchone()
        if row is None:
            return None
        counts = np.frombuffer(row["hist_counts"], dtype="<i8").tolist()
        edges, merged = log_rebin(row["hist_lo"], counts)
        return {"id": row["id"], "n_fired": row["n_fired"], "density": row["density"],
                "mean_act": row["mean_act"], "max_act": row["max_act"],
                "histogram": {"edges": edges, "counts": merged},
                "quantile_edges": np.frombuffer(row["quantile_edges"], dtype="<f8").tolist()}

    def examples(self, latent: int) -> dict[str, list[dict[str, Any]]]:
        """The latent's windows by kind (top, quantile, random), each in display order, with
        every token's text, id and code (None: the token was not encoded, e.g. BOS)."""
        out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        conn = self._conn()
        r = conn.execute("SELECT * FROM examples WHERE latent = ?", (latent,)).fetchone()
        if r is None:
            return out
        seqs = np.frombuffer(r["sequence"], dtype="<i8").tolist()
        wanted = sorted(set(seqs))
        contexts = {s: np.frombuffer(t, dtype="<i4") for s, t in conn.execute(
            f"SELECT sequence, token_ids FROM contexts WHERE sequence IN "
            f"({','.join('?' * len(wanted))})", wanted)} if wanted else {}
        kinds = np.frombuffer(r["kind"], dtype=np.uint8).tolist()
        centres = np.frombuffer(r["position"], dtype="<i4").tolist()
        starts = np.frombuffer(r["start"], dtype="<i4").tolist()
        lengths = np.frombuffer(r["length"], dtype="<i4")
        bins = np.frombuffer(r["bin"], dtype="<i4").tolist()
        values = np.frombuffer(r["value"], dtype="<f4").tolist()
        codes = np.zeros(int(lengths.sum()), dtype=np.float32)
        codes[np.frombuffer(r["act_index"], dtype="<i4")] = np.frombuffer(r["act_value"],
                                                                          dtype="<f4")
        # NaN (not counted) becomes None; x != x only for NaN
        acts: list[float | None] = [None if a != a else a for a in codes.round(4).tolist()]
        texts = self._texts
        n_texts = len(texts)
        cuts = [0, *np.cumsum(lengths).tolist()]
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            ids = contexts[seqs[i]][starts[i]:starts[i] + b - a].tolist()
            out[KINDS[kinds[i]]].append({
                "sequence": seqs[i], "position": centres[i], "start": starts[i],
                "centre": centres[i] - starts[i], "value": values[i], "bin": bins[i],
                "tokens": [texts[t] if t < n_texts else f"<{t}>" for t in ids],
                "token_ids": ids, "acts": acts[a:b]})
        return out

    def logit_effects(self, latent: int) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"promoted": [], "suppressed": []}
        for r in self._conn().execute("SELECT * FROM logit_effects WHERE latent = ?",
                                      (latent,)):
            ids = np.frombuffer(r["token_id"], dtype="<i4").tolist()
            values = np.frombuffer(r["value"], dtype="<f4").tolist()
            out[r["direction"]] = [{"token": self.token_text.get(t, ""), "token_id": t,
                                    "value": v} for t, v in zip(ids, values, strict=True)]
        return out

    def neighbours(self, latent: int) -> list[dict[str, Any]]:
        row = self._conn().execute("SELECT other, cosine FROM neighbours WHERE latent = ?",
                                   (latent,)).fetchone()
        if row is None:
            return []
        return [{"latent": o, "cosine": c} for o, c in zip(
            np.frombuffer(row["other"], dtype="<i4").tolist(),
            np.frombuffer(row["cosine"], dtype="<f4").tolist(), strict=True)]

    def labels(self, latent: int) -> list[dict[str, Any]]:
        return [{**dict(r), "details": json.loads(r["details"])} for r in self._conn().execute(
            "SELECT * FROM labels WHERE latent = ? ORDER BY source, id", (latent,))]

    def explanations(self, latent: int) -> list[dict[str, Any]]:
        conn = self._conn()
        out = []
        for r in conn.execute("SELECT * FROM explanations WHERE latent = ? ORDER BY id",
                              (latent,)).fetchall():
            scores = [dict(s) for s in conn.execute(
                "SELECT scorer, metric, value, n_examples, scorer_model FROM explanation_scores"
                " WHERE explanation_id = ? ORDER BY id", (r["id"],))]
            out.append({**dict(r), "provenance": json.loads(r["provenance"]), "scores": scores})
        return out

    def transcripts(self, latent: int) -> list[dict[str, Any]]:
        """Agent transcripts (e.g. SAGE's, from ``saelab explain --agentic``), oldest first."""
        return [{**dict(r), "content": json.loads(r["content"])} for r in self._conn().execute(
            "SELECT * FROM transcripts WHERE latent = ? ORDER BY id", (latent,))]

    def feature(self, latent: int) -> dict[str, Any] | None:
        """Everything a feature page shows; None for an id outside the SAE."""
        summary = self.summary(latent) if self.has(latent) else None
        if summary is None:
            return None
        return {**summary, "examples": self.examples(latent),
                "logit_effects": self.logit_effects(latent),
                "neighbours": self.neighbours(latent), "labels": self.labels(latent),
                "explanations": self.explanations(latent),
                "transcripts": self.transcripts(latent)}

    # ------------------------------------------------------------------ lists and search

    def list_latents(self, sort: str = "id", descending: bool = False, limit: int = 50,
                     offset: int = 0) -> list[dict[str, Any]]:
        if sort not in SORT_KEYS:
            raise StoreError(f"unknown sort key {sort!r}; use one of {list(SORT_KEYS)}")
        order = "DESC" if descending else "ASC"
        rows = self._conn().execute(
            f"SELECT id, n_fired, density, mean_act, max_act FROM latents "
            f"ORDER BY {sort} {order}, id LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return self._with_titles([dict(r) for r in rows])

    def search(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Latents whose id is ``query`` or whose labels or explanations contain it."""
        query = query.strip()
        ids: list[int] = []
        if query.isdigit() and self.has(int(query)):
            ids.append(int(query))
        if query:
            like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            for r in self._conn().execute(
                    "SELECT latent FROM labels WHERE text LIKE ? ESCAPE '\\' UNION "
                    "SELECT latent FROM explanations WHERE text LIKE ? ESCAPE '\\' "
                    "ORDER BY latent LIMIT ?", (like, like, limit)):
                if r["latent"] not in ids:
                    ids.append(r["latent"])
        rows = [dict(r) for i in ids[:limit] for r in self._conn().execute(
            "SELECT id, n_fired, density, mean_act, max_act FROM latents WHERE id = ?", (i,))]
        return self._with_titles(rows)

    def _with_titles(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        titles = self.titles([r["id"] for r in rows])
        return [{**r, "title": titles.get(r["id"], "")} for r in rows]

    def titles(self, ids: list[int]) -> dict[int, str]:
        """Each latent's shown title: its first label, else its first explanation."""
        titles: dict[int, str] = {}
        if not ids:
            return titles
        marks = ",".join("?" * len(ids))
        for sql in (f"SELECT latent, text FROM labels WHERE latent IN ({marks}) ORDER BY id",
                    f"SELECT latent, text FROM explanations WHERE latent IN ({marks}) "
                    "ORDER BY id"):
            for r in self._conn().execute(sql, ids):
                titles.setdefault(r["latent"], r["text"])
        return titles

    def add_label(self, latent: int, text: str, author: str = "") -> int:
        """Store a user label; returns its id."""
        if not self.has(latent):
            raise StoreError(f"latent {latent} is outside this SAE (0..{self.n_latents - 1})")
        if not text.strip():
            raise StoreError("a label needs some text")
        conn = self._conn()
        cur = conn.execute("INSERT INTO labels (latent, source, text, details) VALUES "
                           "(?, 'user', ?, ?)", (latent, text.strip(), json.dumps(
                               {"author": author})))
        conn.commit()
        return int(cur.lastrowid or 0)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
