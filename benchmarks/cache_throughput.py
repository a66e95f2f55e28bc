"""Activation cache throughput and memory; prints one JSON object.

Three measurements:

- ``model_caching``: cache a real model's activations over the bundled corpus (the packaged
  all-MiniLM-L6-v2 if installed, else a tiny random GPT-2): tokens/s end to end, and the
  share of the time spent in the scatter (pass 1 file writes) and permute (pass 2) steps.
- ``synthetic_caching``: ``--rows`` rows of width ``--width`` fed straight into the cache
  writer (no model: the rows are a fixed random block with the row number written into
  column 0, so generating them costs almost nothing) with ``memory_limit_mb`` as given. It runs
  in a child process so that its peak RSS (``resource.getrusage``) is the cache's alone plus
  the interpreter, numpy and torch. Rows/s and the shuffle (pass 2) share of the time.
- ``read``: training reads of that cache through ``CacheSource``: the first epoch (stored
  order, sequential memory-mapped reads) and a later epoch (a seeded permutation, random
  reads). Just-written files may partly be served from the page cache.

Defaults reproduce the documented case: 10 million rows of width 768 (float16), 2 GB bound.
    python benchmarks/cache_throughput.py                       # the full run (minutes, ~16 GB disk)
    python benchmarks/cache_throughput.py --rows 200000         # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.cache import CacheConfig, CacheSource, CacheWriter, WriterSettings, build_cache
from saelab.text import TextConfig, corpus_path

BATCH_ROWS = 8192


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synthetic_cache(folder: Path, rows: int, width: int, dtype: str, memory_limit_mb: int) -> dict[str, Any]:
    """Feed ``rows`` synthetic rows into a CacheWriter; timings and peak RSS."""
    block = np.random.default_rng(0).standard_normal((BATCH_ROWS, width)).astype(dtype)
    settings = WriterSettings(width=width, max_rows=rows, context_size=BATCH_ROWS,
                              dtype=dtype, memory_limit_mb=memory_limit_mb,
                              meta={"model": "synthetic", "hook": "none"})
    start = time.perf_counter()
    writer = CacheWriter(folder, settings)
    index = np.stack([np.zeros(BATCH_ROWS, dtype=np.int64), np.arange(BATCH_ROWS)], axis=1)
    tokens = np.zeros((1, BATCH_ROWS), dtype=np.int32)  # one "context" per batch
    for number, first in enumerate(range(0, rows, BATCH_ROWS)):
        n = min(BATCH_ROWS, rows - first)
        acts = block[:n].copy()
        acts[:, 0] = np.arange(first, first + n) % 2048  # rows differ; stays in float16 range
        if n < BATCH_ROWS:
            tokens = np.zeros((1, BATCH_ROWS), dtype=np.int32)
        writer.add_batch(number, acts, index[:n], tokens)
    scatter_end = time.perf_counter()
    manifest = writer.finish()
    total = time.perf_counter() - start
    return {"rows": manifest.n_rows, "width": width, "dtype": dtype,
            "memory_limit_mb": memory_limit_mb, "shards": len(manifest.shards),
            "gigabytes": round(manifest.n_rows * width * np.dtype(dtype).itemsize / 1e9, 2),
            "seconds": round(total, 1), "rows_per_s": round(manifest.n_rows / total),
            "scatter_seconds": round(scatter_end - start, 1),
            "shuffle_seconds": round(total - (scatter_end - start), 1),
            "shuffle_share": round((total - (scatter_end - start)) / total, 3),
            "peak_rss_mb": round(peak_rss_mb())}


def read_throughput(folder: Path, batches: int, batch_size: int = 4096) -> dict[str, Any]:
    source = CacheSource(folder, verify=False)
    row_bytes = source.d_in * np.dtype(source.manifest.dtype).itemsize
    per_epoch = source.n_rows // batch_size
    out: dict[str, Any] = {}
    for name, start_batch in (("first_epoch", 0), ("later_epoch", per_epoch)):
        stream = source.batches(batch_size, start_batch)
        n = min(batches, per_epoch)
        start = time.perf_counter()
        for _ in range(n):
            next(stream)
        seconds = time.perf_counter() - start
        out[name] = {"rows_per_s": round(n * batch_size / seconds),
                     "mb_per_s": round(n * batch_size * row_bytes / seconds / 1e6),
                     "batches": n, "batch_size": batch_size}
    start = time.perf_counter()
    CacheSource(folder, verify=True)
    out["verify_seconds"] = round(time.perf_counter() - start, 1)
    return out


def model_caching(folder: Path, max_tokens: int) -> dict[str, Any]:
    """Tokens/s of caching a real model over the bundled corpus."""
    from saelab.models import load_hf_model, packaged_minilm_path
    from saelab.models.tiny import build_tiny_gpt2

    try:
        path, hook, name = packaged_minilm_path(), "encoder.layer.3", "all-MiniLM-L6-v2"
    except Exception:  # the packaged model is optional; fall back to a random tiny GPT-2
        path, hook, name = build_tiny_gpt2(folder / "gpt2"), "transformer.h.1", "tiny-gpt2"
    lm = load_hf_model(path)
    start = time.perf_counter()
    result = build_cache(lm.model, lm.tokenizer, [corpus_path()], [hook], folder / "cache",
                         CacheConfig(batch_contexts=16, max_tokens=max_tokens),
                         TextConfig(context_size=128), model_name=name, log=lambda _: None)
    seconds = time.perf_counter() - start
    info = result.manifests[hook].info
    tokens = result.manifests[hook].n_contexts * 128
    return {"model": name, "hook": hook, "tokens": tokens, "rows": result.manifests[hook].n_rows,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds),
            "scatter_share": round(info["scatter_seconds"] / seconds, 3),
            "shuffle_share": round(info["permute_seconds"] / seconds, 3),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--memory-limit-mb", type=int, default=2048)
    parser.add_argument("--model-tokens", type=int, default=32_768)
    parser.add_argument("--read-batches", type=int, default=300)
    parser.add_argument("--dir", help="scratch folder (default: a temporary folder, removed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="saelab-cache-bench-"))
    if args.child:  # the synthetic run, alone in this process for a clean peak RSS
        print(json.dumps(synthetic_cache(scratch / "synthetic", args.rows, args.width,
                                         args.dtype, args.memory_limit_mb)))
        return
    try:
        report: dict[str, Any] = {"model_caching": model_caching(scratch / "model",
                                                                 args.model_tokens)}
        child = subprocess.run([sys.executable, __file__, "--child", "--dir", str(scratch),
                                "--rows", str(args.rows), "--width", str(args.width),
                                "--dtype", args.dtype, "--memory-limit-mb",
                                str(args.memory_limit_mb)],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        report["synthetic_caching"] = json.loads(child.stdout.strip().splitlines()[-1])
        report["read"] = read_throughput(scratch / "synthetic", args.read_batches)
        print(json.dumps(report, indent=2))
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
