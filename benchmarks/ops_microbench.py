"""Microbenchmark: the sparse TopK training step vs a dense (peer-style) reference.

Prints one JSON object: encoder-matmul GFLOP/s (fp32, bf16), and the median time per training
step (forward + backward of MSE + AuxK) with a breakdown, at d=768, m=16384, k=32, B=4096.

    .venv/bin/python benchmarks/ops_microbench.py [--repeats 3] [--no-bf16] [--dense-bf16]

Timings are medians of ``--repeats`` runs; on a shared machine expect ±20% noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from saelab.ops import (
    SparseCodes,
    batch_topk_encode,
    sparse_decode,
    topk_encode,
    tune_cpu_allocator,
)
from saelab.ops.encode import _Preacts
from saelab.ops.kernels import row_topk
from saelab.ops.reference import dense_aux_topk, dense_batch_topk, dense_preacts, dense_topk

AUX_ALPHA = 1 / 32


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs.

    Also records the median process CPU seconds in ``CPU_TIMES`` (keyed by call order), which
    is steadier than wall time when other jobs share the cores.
    """
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    LAST_CPU[0] = statistics.median(cpus)
    return statistics.median(walls)


LAST_CPU = [0.0]  # CPU seconds of the latest median_time call


class Setup:
    """Random SAE parameters and a batch; W_enc initialised as W_dec.T (tied init)."""

    def __init__(self, B: int, D: int, M: int, k: int, k_aux: int, dead_frac: float) -> None:
        gen = torch.Generator().manual_seed(0)
        W_dec = torch.randn(M, D, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = W_dec.requires_grad_()
        self.W_enc = W_dec.detach().t().contiguous().requires_grad_()
        self.b_enc = torch.zeros(M, requires_grad=True)
        self.b_dec = torch.zeros(D, requires_grad=True)
        self.x = torch.randn(B, D, generator=gen)
        self.dead = torch.rand(M, generator=gen) < dead_frac
        self.k, self.k_aux = k, k_aux
        self.flops = 2 * B * D * M

    def params(self) -> list[Tensor]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def zero_grad(self) -> None:
        for p in self.params():
            p.grad = None


def losses(x: Tensor, x_hat: Tensor, aux_hat: Tensor) -> Tensor:
    """MSE + α·AuxK (the aux target is the detached residual)."""
    err = x - x_hat
    mse = err.pow(2).sum(-1).mean()
    return mse + AUX_ALPHA * (err.detach() - aux_hat).pow(2).sum(-1).mean()


def dense_step(s: Setup, batch: bool, dtype: torch.dtype | None) -> None:
    """Peer-style step: dense codes, dense decode, dense backward."""
    s.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        pre = dense_preacts(s.x, s.W_enc, s.b_enc, s.b_dec)
        codes = dense_batch_topk(pre, s.k) if batch else dense_topk(pre, s.k)
        x_hat = codes @ s.W_dec + s.b_dec
        aux_hat = dense_aux_topk(pre, s.dead, s.k_aux) @ s.W_dec
    losses(s.x, x_hat.float(), aux_hat.float()).backward()


def sparse_encode(s: Setup, batch: bool, dtype: torch.dtype | None) -> tuple[SparseCodes, Any]:
    encode = batch_topk_encode if batch else topk_encode
    return encode(s.x, s.W_enc, s.b_enc, s.b_dec, s.k, matmul_dtype=dtype, aux=(s.dead, s.k_aux))


def sparse_step(s: Setup, batch: bool, dtype: torch.dtype | None) -> None:
    s.zero_grad()
    codes, aux = sparse_encode(s, batch, dtype)
    x_hat = sparse_decode(codes, s.W_dec, s.b_dec)
    losses(s.x, x_hat, sparse_decode(aux, s.W_dec)).backward()


def sparse_breakdown(s: Setup, batch: bool, dtype: torch.dtype | None, reps: int) -> dict:
    """Median seconds of each stage of the sparse step."""
    pre = _Preacts(s.x, s.W_enc, s.b_enc, s.b_dec, dtype, None)

    def matmul_only() -> None:
        for _ in pre.chunks():
            pass

    def matmul_and_topk() -> None:
        for _, pre_RM in pre.chunks():
            row_topk(pre_RM, 2 * s.k if batch else s.k)

    with torch.no_grad():
        t_mm = median_time(matmul_only, reps)
        t_mm_topk = median_time(matmul_and_topk, reps)
        t_encode = median_time(lambda: sparse_encode(s, batch, dtype), reps)
        codes, aux = sparse_encode(s, batch, dtype)
        t_decode = median_time(
            lambda: (sparse_decode(codes, s.W_dec, s.b_dec), sparse_decode(aux, s.W_dec)), reps
        )
    t_step = median_time(lambda: sparse_step(s, batch, dtype), reps)
    cpu_step = LAST_CPU[0]
    return {
        "matmul_s": t_mm,
        "row_topk_s": t_mm_topk - t_mm,
        "selection_total_s": t_encode - t_mm,
        "decode_fwd_s": t_decode,
        "backward_s": t_step - t_encode - t_decode,
        "step_s": t_step,
        "step_cpu_s": cpu_step,
    }


def matmul_gflops(s: Setup, dtype: torch.dtype, reps: int) -> float:
    """GFLOP/s of the full-batch encoder product in the layout the encoder uses."""
    pre = _Preacts(s.x, s.W_enc, s.b_enc, s.b_dec, dtype, chunk_rows=s.x.shape[0])
    out = torch.empty(s.x.shape[0], s.W_enc.shape[1], dtype=dtype)
    t = median_time(lambda: torch.mm(pre.xc_BD, pre.W_DM, out=out), reps)
    return s.flops / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--k-aux", type=int, default=256)
    ap.add_argument("--dead-frac", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="skip all bf16 measurements")
    ap.add_argument("--dense-bf16", action="store_true", help="also time the dense bf16 step")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument(
        "--default-allocator", action="store_true", help="skip tune_cpu_allocator() (glibc)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tuned = not args.default_allocator and tune_cpu_allocator()
    s = Setup(args.batch, args.d, args.m, args.k, args.k_aux, args.dead_frac)
    reps = args.repeats
    dtypes: list[tuple[str, torch.dtype | None]] = [("fp32", None)]
    if not args.no_bf16:
        dtypes.append(("bf16", torch.bfloat16))
    result: dict[str, Any] = {
        "shape": {"B": args.batch, "d": args.d, "m": args.m, "k": args.k, "k_aux": args.k_aux},
        "n_dead": int(s.dead.sum()),
        "threads": args.threads,
        "allocator_tuned": tuned,
        "repeats": reps,
        "matmul_gflops": {name: matmul_gflops(s, dt or torch.float32, reps) for name, dt in dtypes},
    }
    result["step_bound_tokens_per_s"] = {
        name: gf * 1e9 / s.flops * args.batch for name, gf in result["matmul_gflops"].items()
    }
    for arch, batch in (("topk", False), ("batch_topk", True)):
        for name, dt in dtypes:
            entry = sparse_breakdown(s, batch, dt, reps)
            entry["tokens_per_s"] = args.batch / entry["step_s"]
            run_dense = not args.no_dense and (dt is None or args.dense_bf16)
            if run_dense:
                t_dense = median_time(partial(dense_step, s, batch, dt), reps)
                entry["dense_step_s"] = t_dense
                entry["dense_step_cpu_s"] = LAST_CPU[0]
                entry["dense_tokens_per_s"] = args.batch / t_dense
                entry["speedup_vs_dense"] = t_dense / entry["step_s"]
            result[f"{arch}_{name}"] = entry
            print(json.dumps({f"{arch}_{name}": entry}), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
