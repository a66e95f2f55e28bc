"""The feature store's SQLite schema and the SAE fingerprint that binds a store to its weights.

One store is one SQLite file, ``features.db``. Tables written by ``saelab features build``:
``meta``, ``latents``, ``examples``, ``contexts``, ``tokens``, ``logit_effects``, ``neighbours`` and
board-game rows of ``labels``. Tables kept for later work and for users (a rebuild copies them
over): ``labels`` (user labels), ``explanations``, ``explanation_scores``, ``transcripts``.
docs/features.md describes every column.
"""

from __future__ import annotations

import hashlib
import sqlite3

import torch

from saelab.architectures.base import SAE

#: 2: examples packed one row per latent, window tokens read from ``contexts``, codes
#: stored sparse (version 1: one row per window with its tokens and every code)
SCHEMA_VERSION = 2
STORE_NAME = "features.db"

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL                      -- JSON
);
CREATE TABLE IF NOT EXISTS latents (
    id INTEGER PRIMARY KEY,                  -- latent index in the SAE
    n_fired INTEGER NOT NULL,                -- tokens where the code is > 0
    density REAL NOT NULL,                   -- n_fired / tokens seen
    mean_act REAL NOT NULL,                  -- mean code over the tokens where it fired
    max_act REAL NOT NULL,
    hist_lo INTEGER NOT NULL,                -- first fine log-bin index with a count
    hist_counts BLOB NOT NULL,               -- int64[] counts of fine log-bins hist_lo, hist_lo+1..
    quantile_edges BLOB NOT NULL             -- float64[] activation edges of the equal-count bins
);
CREATE INDEX IF NOT EXISTS latents_by_density ON latents(density);
CREATE INDEX IF NOT EXISTS latents_by_max ON latents(max_act);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,                  -- token id of the model's vocabulary
    text TEXT NOT NULL                       -- how the token is shown
);
CREATE TABLE IF NOT EXISTS contexts (
    sequence INTEGER PRIMARY KEY,            -- context index in the source
    token_ids BLOB NOT NULL                  -- int32[context_size] its tokens
);                                           -- only contexts that some example window is in
CREATE TABLE IF NOT EXISTS examples (
    latent INTEGER PRIMARY KEY,              -- one row per latent: all its windows, packed
    n INTEGER NOT NULL,                      -- windows in this row, in display order: top by
                                             -- rank, quantile by bin (highest first) then
                                             -- rank, random
    kind BLOB NOT NULL,                      -- uint8[n] 0 = top, 1 = quantile, 2 = random
    sequence BLOB NOT NULL,                  -- int64[n] context of each window (-> contexts)
    position BLOB NOT NULL,                  -- int32[n] position of the centre token
    start BLOB NOT NULL,                     -- int32[n] position of the window's first token
    length BLOB NOT NULL,                    -- int32[n] tokens in the window
    bin BLOB NOT NULL,                       -- int32[n] quantile bin (0 = lowest; 0 for others)
    value BLOB NOT NULL,                     -- float32[n] the latent's code at the centre
    act_index BLOB NOT NULL,                 -- int32[m] tokens with a nonzero or no code, as
                                             -- indices into the n windows laid end to end
    act_value BLOB NOT NULL                  -- float32[m] the latent's code there (NaN = not
                                             -- counted, e.g. BOS); every other token: 0
);                                           -- arrays: little-endian; rowid table (large rows)
CREATE TABLE IF NOT EXISTS logit_effects (
    latent INTEGER NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('promoted', 'suppressed')),
    token_id BLOB NOT NULL,                  -- int32[n] token ids, strongest first
    value BLOB NOT NULL,                     -- float32[n] logit change per unit of code
                                             -- (docs/features.md)
    PRIMARY KEY (latent, direction)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS neighbours (
    latent INTEGER PRIMARY KEY,
    other BLOB NOT NULL,                     -- int32[n] nearest latents, nearest first
    cosine BLOB NOT NULL                     -- float32[n] cosine of the two decoder directions
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    latent INTEGER NOT NULL,
    source TEXT NOT NULL,                    -- 'user', 'boardgame', ...
    text TEXT NOT NULL,
    score REAL,                              -- e.g. held-out F1 of a board-game label
    score_name TEXT,
    details TEXT NOT NULL DEFAULT '{}',      -- JSON provenance (thresholds, split sizes, author)
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX IF NOT EXISTS labels_by_latent ON labels(latent);
CREATE TABLE IF NOT EXISTS explanations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    latent INTEGER NOT NULL,
    text TEXT NOT NULL,
    method TEXT NOT NULL,                    -- e.g. 'delphi-quantile', 'sage'
    explainer_model TEXT NOT NULL DEFAULT '',
    provenance TEXT NOT NULL DEFAULT '{}',   -- JSON: prompt version, examples shown, seeds
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX IF NOT EXISTS explanations_by_latent ON explanations(latent);
CREATE TABLE IF NOT EXISTS explanation_scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    explanation_id INTEGER NOT NULL REFERENCES explanations(id) ON DELETE CASCADE,
    scorer TEXT NOT NULL,                    -- e.g. 'detection', 'fuzzing', 'simulation'
    metric TEXT NOT NULL,                    -- e.g. 'balanced_accuracy', 'auroc'
    value REAL NOT NULL,
    n_examples INTEGER,
    scorer_model TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX IF NOT EXISTS scores_by_explanation ON explanation_scores(explanation_id);
CREATE TABLE IF NOT EXISTS transcripts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    explanation_id INTEGER REFERENCES explanations(id) ON DELETE CASCADE,
    latent INTEGER NOT NULL,
    kind TEXT NOT NULL,                      -- e.g. 'sage'
    content TEXT NOT NULL,                   -- JSON list of turns
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
"""

#: tables users and later stages write; a rebuild of the store copies their rows over
USER_TABLES = ("explanations", "explanation_scores", "transcripts")


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def fingerprint(sae: SAE) -> str:
    """sha256 over the architecture and every state tensor (name, dtype, shape, bytes): equal
    for the same weights however they were saved, different for any other weights."""
    digest = hashlib.sha256(sae.name.encode())
    for name, tensor in sorted(sae.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
