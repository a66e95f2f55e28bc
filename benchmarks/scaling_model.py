"""Scaling model on paper: tokens/s of TopK SAE training on 1–64 devices, data-parallel and
latent-sharded, at 65,536 and 1,048,576 latents, from measured per-step costs and the bytes
each rank exchanges.

Per-step costs are measured here, on this machine, unless given (--matmul-tflops,
--sparse-us-per-token, --optimiser-ns-per-weight for a GPU's figures):

- encoder product: 2·B·d·M FLOPs at the measured fp32 matmul rate;
- sparse work (selection, decode, all backward passes, O(B·k·d)): measured per token as the
  step time of a narrow SAE minus its encoder product and optimiser;
- optimiser + decoder constraint (O(M·d) per step, bandwidth-bound): measured per weight.

Communication per step, ring collectives at --bandwidth-gbps per device (each direction):

- data parallel: all-reduce of every gradient, 2·(N−1)/N · (2·M·d + M + d)·4 bytes (b per
  rank fixed, global batch N·b);
- latent sharded: all-gather of per-row candidates (N−1)·B·k·4 bytes in, all-reduce of the
  reconstruction 2·(N−1)/N·B·d·4 bytes (B fixed, latents M/N per rank); with AuxK twice.

Assumes no overlap of communication with compute (a lower bound on speed) and ignores latency.
Usage: python benchmarks/scaling_model.py [--bandwidth-gbps 50] [--batch 4096] [--k 32]
Prints a table and a JSON document last (also benchmarks/results/scaling_model.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from saelab.data import IteratorSource
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer
from saelab.training.throughput import measure_matmul_peak
from saelab.training.trainer import make_adam, normalise_decoder, remove_parallel_gradient

HERE = Path(__file__).resolve().parent


def best_time(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_optimiser_s_per_weight(d: int, m: int) -> float:
    """Seconds per decoder/encoder weight of Adam + parallel-gradient removal + renorm."""
    W_enc = torch.nn.Parameter(torch.randn(d, m))
    W_dec = torch.nn.Parameter(torch.randn(m, d))
    for p in (W_enc, W_dec):
        p.grad = torch.randn_like(p)
    opt = make_adam([W_enc, W_dec], lr=1e-4, betas=(0.9, 0.999), eps=1e-8)

    def step() -> None:
        remove_parallel_gradient(W_dec)
        opt.step()
        normalise_decoder(W_dec)

    return best_time(step) / (2 * m * d)


def measure_sparse_s_per_token(d: int, m: int, k: int, batch: int, opt_s: float,
                               flops: float) -> float:
    """Step time of a narrow SAE minus its encoder product and optimiser, per token."""
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(batch, d, generator=gen) for _ in range(2)]
    source = IteratorSource(lambda: iter(pool), d_in=d)
    cfg = TrainConfig(total_tokens=batch * 100, batch_size=batch, checkpoint_every=0,
                      progress=False, measure_peak=False, init_samples=batch,
                      dead_after_tokens=10**9)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer({"t": config_from_dict({"architecture": "topk", "d_sae": m, "k": k})},
                          cfg, source, out)
        trainer.initialise()
        step = best_time(lambda: trainer.train_step(pool[0]))
    return max(0.0, step - 2 * batch * d * m / flops - opt_s * 2 * m * d) / batch


def ring_allreduce_s(nbytes: float, n: int, bw: float) -> float:
    return 0.0 if n == 1 else 2 * (n - 1) / n * nbytes / bw


def model(m: int, n: int, a: argparse.Namespace, c: dict[str, float]) -> dict[str, float]:
    d, b, k, bw = a.d, a.batch, a.k, a.bandwidth_gbps * 1e9
    enc = lambda rows, width: 2 * rows * d * width / c["matmul_flops"]  # noqa: E731
    # data parallel: b rows per rank, whole SAE on each rank
    dp_compute = enc(b, m) + b * c["sparse_s_per_token"] + 2 * m * d * c["optimiser_s_per_weight"]
    dp_comm = ring_allreduce_s((2 * m * d + m + d) * 4, n, bw)
    # latent sharded: the same b rows on every rank, m / n latents per rank
    ls_compute = (enc(b, m / n) + b * c["sparse_s_per_token"]
                  + 2 * m / n * d * c["optimiser_s_per_weight"])
    passes = 2 if a.auxk else 1
    ls_comm = 0.0 if n == 1 else passes * ((n - 1) * b * k * 4 / bw
                                           + ring_allreduce_s(b * d * 4, n, bw))
    return {"latents": m, "devices": n,
            "dp_tokens_per_s": n * b / (dp_compute + dp_comm), "dp_comm_share": dp_comm / (dp_compute + dp_comm),
            "ls_tokens_per_s": b / (ls_compute + ls_comm), "ls_comm_share": ls_comm / (ls_compute + ls_comm),
            "dp_bytes_per_rank": (2 * m * d + m + d) * 4 * (2 * (n - 1) / n if n > 1 else 0),
            "ls_bytes_per_rank": passes * ((n - 1) * b * k * 4 + 2 * (n - 1) / n * b * d * 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096, help="rows per rank and step")
    p.add_argument("--bandwidth-gbps", type=float, default=50.0,
                   help="per-device interconnect bandwidth, GB/s (50 ≈ 400 Gb/s InfiniBand)")
    p.add_argument("--auxk", action="store_true", help="count the AuxK exchanges too")
    p.add_argument("--matmul-tflops", type=float, default=0.0, help="device fp32/bf16 matmul "
                   "TFLOP/s actually reached (default: measured here)")
    p.add_argument("--sparse-us-per-token", type=float, default=-1.0)
    p.add_argument("--optimiser-ns-per-weight", type=float, default=-1.0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    flops = a.matmul_tflops * 1e12 or measure_matmul_peak(shape=(2048, a.d, 8192))
    opt = (a.optimiser_ns_per_weight * 1e-9 if a.optimiser_ns_per_weight >= 0
           else measure_optimiser_s_per_weight(a.d, 16384))
    sparse = (a.sparse_us_per_token * 1e-6 if a.sparse_us_per_token >= 0
              else measure_sparse_s_per_token(a.d, 1024, a.k, a.batch, opt, flops))
    costs = {"matmul_flops": flops, "optimiser_s_per_weight": opt, "sparse_s_per_token": sparse}
    measured = "given" if a.matmul_tflops else "measured on this machine"
    print(f"per-device costs ({measured}): matmul {flops / 1e12:.3f} TFLOP/s, sparse work "
          f"{sparse * 1e6:.2f} µs/token, optimiser {opt * 1e9:.2f} ns/weight; interconnect "
          f"{a.bandwidth_gbps:g} GB/s; d={a.d}, k={a.k}, {a.batch} rows per rank and step")
    rows = []
    print("\n| latents | devices | data-parallel tokens/s | DP comm share | latent-sharded "
          "tokens/s | LS comm share |\n|---|---|---|---|---|---|")
    for m in (65536, 1 << 20):
        for n in (1, 2, 4, 8, 16, 32, 64):
            r = model(m, n, a, costs)
            rows.append(r)
            print(f"| {m:,} | {n} | {r['dp_tokens_per_s']:,.0f} | {r['dp_comm_share']:.0%} | "
                  f"{r['ls_tokens_per_s']:,.0f} | {r['ls_comm_share']:.0%} |")
    for m in (65536, 1 << 20):
        r = next(x for x in rows if x["latents"] == m and x["devices"] == 64)
        one = next(x for x in rows if x["latents"] == m and x["devices"] == 1)
        best = "data parallel" if r["dp_tokens_per_s"] >= r["ls_tokens_per_s"] else "latent sharded"
        print(f"\n{m:,} latents on 64 devices: {best} is faster (DP {r['dp_tokens_per_s']:,.0f} "
              f"tokens/s = {r['dp_tokens_per_s'] / one['dp_tokens_per_s']:.1f}× one device, "
              f"{r['dp_comm_share']:.0%} of its step in the gradient all-reduce; LS "
              f"{r['ls_tokens_per_s']:,.0f} tokens/s = {r['ls_tokens_per_s'] / one['ls_tokens_per_s']:.1f}×, "
              f"{r['ls_comm_share']:.0%} in exchanges). Latent sharding also divides the weights "
              "and optimiser state over the devices, which data parallelism replicates.")
    print("No overlap of communication with compute is assumed, so these are lower bounds.")
    result = {"inputs": {**vars(a), **costs, "source": measured}, "rows": rows}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "scaling_model.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
