"""A caching run killed with SIGKILL half-way resumes without losing or duplicating rows."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from saelab.cache import CacheConfig, CacheSource, build_cache
from saelab.models.tiny import TinyTokenModel
from saelab.text import TextConfig, WordTokenizer, corpus_path, read_all, special_ids
from saelab.text.packing import token_batches

HOOKS = ["blocks.0", "blocks.1:input"]
TEXT = TextConfig(context_size=32)
# 1024-wide float32 rows (4 KB) and a 16 MB budget: 2,048-row buckets, so 4 buckets here.
# The killed run commits after every batch; the others commit rarely (fsync is slow) — the
# cache's content does not depend on it.
CFG = CacheConfig(batch_contexts=4, max_tokens=8_000, memory_limit_mb=16, commit_every_s=0)
FAST = dataclasses.replace(CFG, commit_every_s=60)

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from test_cache_resume import CFG, HOOKS, TEXT, make_model
    from saelab.cache import build_cache
    from saelab.text import corpus_path
    model, tok = make_model()
    def slow_forward(tokens):
        time.sleep(0.03)  # a slow model, so the kill lands mid-run
        return model(tokens)
    build_cache(model, tok, [corpus_path()], HOOKS, sys.argv[1], CFG, TEXT, forward=slow_forward)
""")


def make_model() -> tuple[TinyTokenModel, WordTokenizer]:
    tok = WordTokenizer.from_texts(read_all([corpus_path()]), max_vocab=600)
    return TinyTokenModel(len(tok), d_model=1024, n_blocks=2, d_mlp=32), tok


def batches_done(folder: Path) -> int:
    try:
        return int(json.loads((folder / "progress.json").read_text())["batches_done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def kill_half_way(out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], env=env)
    progress_dir = out / "blocks.0"
    deadline = time.monotonic() + 60
    while batches_done(progress_dir) < 15 and time.monotonic() < deadline:
        assert proc.poll() is None, "the caching run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return batches_done(progress_dir)


def test_killed_cache_resumes_exactly(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    done_at_kill = kill_half_way(out)
    assert 15 <= done_at_kill < 55  # killed half-way (63 batches in all)
    assert not (out / "blocks.0" / "manifest.json").exists()
    # a torn write after the last commit: the resume must cut it off
    with open(out / "blocks.0" / "_work" / "bucket_00001.acts", "ab") as fh:
        fh.write(b"\x00" * 1000)

    model, tok = make_model()
    resumed = build_cache(model, tok, [corpus_path()], HOOKS, out, FAST, TEXT, log=lambda _: None)
    fresh = build_cache(model, tok, [corpus_path()], HOOKS, tmp_path / "fresh", FAST, TEXT,
                        log=lambda _: None)
    for hook in ("blocks.0", "blocks.1:input"):
        a, b = resumed.manifests[hook], fresh.manifests[hook]
        assert len(a.shards) == 4
        assert [s.acts_sha256 for s in a.shards] == [s.acts_sha256 for s in b.shards]  # byte-identical
        assert a.tokens_sha256 == b.tokens_sha256

    source = CacheSource(resumed.folders["blocks.0"])
    index = source.positions(np.arange(source.n_rows))
    keys = index[:, 0] * TEXT.context_size + index[:, 1]
    assert len(np.unique(keys)) == source.n_rows  # no (sequence, position) twice
    tokens = np.concatenate([b.numpy() for b in token_batches(
        [corpus_path()], tok, TEXT, 4, max_contexts=source.manifest.n_contexts)])
    assert np.array_equal(source.tokens, tokens)
    counted = ~np.isin(tokens, special_ids(tok))
    expected = {s * TEXT.context_size + p for s, p in zip(*np.nonzero(counted), strict=True)}
    assert set(keys.tolist()) == expected  # and none lost
