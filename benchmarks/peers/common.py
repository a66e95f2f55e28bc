"""Shared by the throughput runners: the same in-memory activations and the same timing rules
for every library. Each runner runs in its own process and prints one JSON line."""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--m", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="saelab only: cpu or cuda")
    p.add_argument("--autocast", default="off", help="saelab only: off or bf16")
    p.add_argument("--compare-old", action="store_true",
                   help="saelab only: alternate the earlier step paths with the current one")
    p.add_argument("--paths", default="addmm,row_major,new",
                   help="saelab only, with --compare-old: the step paths to alternate")
    p.add_argument("--breakdown", action="store_true",
                   help="saelab only: profile one step and print where its time goes")
    return p.parse_args()


def activation_pool(d: int, batch: int, n_batches: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Identical activations in every library's process (same torch, same seed): sparse
    non-negative mixtures of random directions plus noise, a stand-in for LM activations."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(4 * d, d, generator=gen) / d ** 0.5
    pool = []
    for _ in range(n_batches):
        codes = torch.rand(batch, 4 * d, generator=gen)
        codes = codes * (codes > 0.98)
        pool.append(codes @ feats * 10 + 0.1 * torch.randn(batch, d, generator=gen))
    return pool


def time_steps(step: Callable[[torch.Tensor], None], pool: list[torch.Tensor], warmup: int,
               steps: int) -> list[float]:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for i in range(warmup):
        step(pool[i % len(pool)])
    times = []
    for i in range(steps):
        sync()
        start = time.perf_counter()
        step(pool[i % len(pool)])
        sync()  # GPU work is asynchronous: time it to completion
        times.append(time.perf_counter() - start)
    return times


def report(library: str, args: argparse.Namespace, times: list[float], **extra: object) -> None:
    times_sorted = sorted(times)
    median = times_sorted[len(times) // 2]
    print(json.dumps({
        "library": library, "d": args.d, "m": args.m, "k": args.k, "batch": args.batch,
        "dtype": args.dtype, "threads": args.threads, "step_times_s": times,
        "median_step_s": median, "tokens_per_s": args.batch / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra,
    }))
