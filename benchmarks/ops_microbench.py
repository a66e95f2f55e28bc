"""Microbenchmark: the sparse TopK training step vs a dense (peer-style) reference.

Prints JSON: encoder-matmul GFLOP/s (fp32, bf16) for the B×d @ d×m product, and the time per
training step (forward + backward of MSE + AuxK) with a breakdown, at d=768, m=16384, k=32,
B=4096 by default. Each figure is the median of ``--repeats`` runs after one warm-up; ``*_min``
is the fastest run and ``*_cpu`` the median process CPU time (steadier on a shared machine).

    .venv/bin/python benchmarks/ops_microbench.py                      # everything (~5 min)
    .venv/bin/python benchmarks/ops_microbench.py --parts matmul
    .venv/bin/python benchmarks/ops_microbench.py --parts topk --dtypes fp32

The dense bf16 step (``--dense-bf16``) uses CPU autocast, which on CPUs without native bf16
GEMM runs at <1 GFLOP/s: expect many minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from saelab.ops import Encoded, batch_topk_encode, sparse_decode, topk_encode, tune_cpu_allocator
from saelab.ops.encode import _Preacts
from saelab.ops.reference import dense_aux_topk, dense_batch_topk, dense_preacts, dense_topk

AUX_ALPHA = 1 / 32
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median and min wall seconds, and median CPU seconds, after one warm-up run."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return {"s": statistics.median(walls), "min": min(walls), "cpu": statistics.median(cpus)}


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

    def zero_grad(self) -> None:
        for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec):
            p.grad = None


def total_loss(x: Tensor, x_hat: Tensor, aux_hat: Tensor) -> Tensor:
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
    total_loss(s.x, x_hat.float(), aux_hat.float()).backward()


def sparse_encode(s: Setup, batch: bool, dtype: torch.dtype | None) -> Encoded:
    encode = batch_topk_encode if batch else topk_encode
    aux = (s.dead, s.k_aux)
    return encode(s.x, s.W_enc, s.b_enc, s.b_dec, s.k, matmul_dtype=dtype, aux=aux)


def sparse_step(s: Setup, batch: bool, dtype: torch.dtype | None) -> None:
    s.zero_grad()
    codes, aux = sparse_encode(s, batch, dtype)
    assert aux is not None
    x_hat = sparse_decode(codes, s.W_dec, s.b_dec)
    total_loss(s.x, x_hat, sparse_decode(aux, s.W_dec)).backward()


def sparse_breakdown(s: Setup, batch: bool, dtype: torch.dtype | None, reps: int) -> dict:
    """Median seconds of each stage of the sparse step (stages by subtraction)."""
    pre = _Preacts(s.x, s.W_enc, s.b_enc, s.b_dec, dtype, None)

    def matmul_only() -> None:
        for _ in pre.chunks():
            pass

    with torch.no_grad():
        t_mm = timed(matmul_only, reps)
        t_enc = timed(lambda: sparse_encode(s, batch, dtype), reps)
        codes, aux = sparse_encode(s, batch, dtype)
        assert aux is not None
        t_dec = timed(
            lambda: (sparse_decode(codes, s.W_dec, s.b_dec), sparse_decode(aux, s.W_dec)), reps
        )
    t_step = timed(lambda: sparse_step(s, batch, dtype), reps)
    return {
        "matmul_s": t_mm["s"],
        "selection_s": t_enc["s"] - t_mm["s"],
        "decode_fwd_s": t_dec["s"],
        "backward_s": t_step["s"] - t_enc["s"] - t_dec["s"],
        "step_s": t_step["s"],
        "step_min_s": t_step["min"],
        "step_cpu_s": t_step["cpu"],
        "matmul_cpu_s": t_mm["cpu"],
        "encode_cpu_s": t_enc["cpu"],
        "decode_cpu_s": t_dec["cpu"],
        "tokens_per_s": s.x.shape[0] / t_step["s"],
        "tokens_per_s_best": s.x.shape[0] / t_step["min"],
        "nnz_per_row": codes.nnz / codes.n_rows,
        "aux_nnz_per_row": aux.nnz / aux.n_rows,
    }


def matmul_gflops(s: Setup, dtype: torch.dtype | None, reps: int) -> dict[str, float]:
    """GFLOP/s of the full-batch encoder product, chunked and laid out as the encoder runs it."""
    pre = _Preacts(s.x, s.W_enc, s.b_enc, s.b_dec, dtype, None)
    t = timed(lambda: [None for _ in pre.chunks()], reps)  # as the encoder runs it, bias included
    return {"gflops": s.flops / t["s"] / 1e9, "gflops_best": s.flops / t["min"] / 1e9}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--k-aux", type=int, default=256)
    ap.add_argument("--dead-frac", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="matmul,topk,batch_topk", help="comma-separated subset")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference step")
    ap.add_argument("--dense-bf16", action="store_true", help="also time the dense bf16 step")
    ap.add_argument("--default-allocator", action="store_true", help="skip tune_cpu_allocator()")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tuned = not args.default_allocator and tune_cpu_allocator()
    s = Setup(args.batch, args.d, args.m, args.k, args.k_aux, args.dead_frac)
    parts, dtypes = args.parts.split(","), args.dtypes.split(",")
    result: dict[str, Any] = {
        "shape": {"B": args.batch, "d": args.d, "m": args.m, "k": args.k, "k_aux": args.k_aux},
        "n_dead": int(s.dead.sum()),
        "threads": args.threads,
        "allocator_tuned": tuned,
        "repeats": args.repeats,
    }
    if "matmul" in parts:
        for name in dtypes:
            mm = matmul_gflops(s, DTYPES[name], args.repeats)
            mm["step_bound_tokens_per_s"] = mm["gflops"] * 1e9 / s.flops * args.batch
            result[f"matmul_{name}"] = mm
            print(json.dumps({f"matmul_{name}": mm}), flush=True)
    for arch in ("topk", "batch_topk"):
        if arch not in parts:
            continue
        batch = arch == "batch_topk"
        for name in dtypes:
            dt = DTYPES[name]
            entry = sparse_breakdown(s, batch, dt, args.repeats)
            if not args.no_dense and (dt is None or args.dense_bf16):
                dense = timed(lambda b=batch, d=dt: dense_step(s, b, d), args.repeats)  # type: ignore[misc]
                entry |= {"dense_step_s": dense["s"], "dense_step_cpu_s": dense["cpu"]}
                entry["dense_tokens_per_s"] = args.batch / dense["s"]
                entry["speedup_vs_dense"] = dense["s"] / entry["step_s"]
            result[f"{arch}_{name}"] = entry
            print(json.dumps({f"{arch}_{name}": entry}), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
