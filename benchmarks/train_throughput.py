"""Training throughput of a TopK SAE, saelab side by side with SAELens and dictionary_learning.

Installs the peers into a separate virtual environment (benchmarks/.peer-venv: PyPI `sae-lens`
and `dictionary-learning`, torch 2.13.0) if it is missing, then in one invocation runs
alternating rounds of saelab, SAELens and dictionary_learning — each in a fresh process, on the
same in-memory activations (d=768, 16,384 latents, k=32, batch 4096, fp32, 2 threads) — and
prints tokens/s and peak memory per library, the ratios, saelab's share of the measured fp32
matmul peak and of the encoder-bound, bf16 against fp32, a scaling table over latents and k,
and the 65,536-latent row: the share of the step outside the encoder product (goal ≤ 25%).

Usage: python benchmarks/train_throughput.py [--rounds 2] [--steps 5] [--skip-peers] [--quick]
       [--skip-scaling] [--skip-wide]
Prints a JSON document last (also written to benchmarks/results/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from saelab.ops import native_low_precision_matmul

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_VENV = HERE / ".peer-venv"
PEER_PY = PEER_VENV / "bin" / "python"


def peer_import_error() -> str | None:
    """Why the peer venv cannot import both peers (None when it can)."""
    if not PEER_PY.exists():
        return f"{PEER_PY} does not exist"
    proc = subprocess.run([str(PEER_PY), "-c", "import sae_lens, dictionary_learning"],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def ensure_peer_venv() -> None:
    """Make benchmarks/.peer-venv import both peers: create it, or finish or repair a half-made
    one (an interrupted install, a broken torchvision). pip skips what is already there."""
    if peer_import_error() is None:
        return
    print("installing SAELens and dictionary_learning into benchmarks/.peer-venv "
          "(pip shows its progress) ...", file=sys.stderr)
    try:
        if not PEER_PY.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_PY), "-m", "pip", "install", "-c", str(ROOT / "constraints.txt"),
                        "torch==2.13.0", "sae-lens", "dictionary-learning"], check=True)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"installing the peers failed ({err}); rerun to continue the install, "
                         f"delete {PEER_VENV} to start over, or pass --skip-peers") from err
    # nnsight (a dictionary_learning dependency) pulls a torchvision wheel built against another
    # torch; its missing operators break transformers' lazy imports, which SAELens needs. Neither
    # peer needs torchvision for SAE training.
    subprocess.run([str(PEER_PY), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    error = peer_import_error()
    if error is not None:
        raise SystemExit(f"the peer venv still cannot import sae_lens and dictionary_learning "
                         f"({error}); delete {PEER_VENV} and rerun, or pass --skip-peers")


def run_one(script: str, python: str, args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE / "peers")}
    proc = subprocess.run([python, str(HERE / "peers" / script), *args], capture_output=True,
                          text=True, env=env, cwd=str(HERE / "peers"))
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak(dtype: torch.dtype, threads: int, n: int = 4096, d: int = 768, m: int = 16384,
                repeats: int = 4) -> float:
    """Best-of FLOP/s of a plain (n×d)@(d×m) product in ``dtype``."""
    torch.set_num_threads(threads)
    a = torch.randn(n, d).to(dtype)
    b = torch.randn(d, m).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n * d * m / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wide_row(args: argparse.Namespace) -> dict:
    """At 65,536 latents the O(latents·d) work must stay a small share of the step (goal ≤ 25%).
    Two measures: in the step itself, 1 − (seconds in the step's own encoder GEMMs) / step; and
    against a lone product, 1 − (one whole-batch GEMM into a reused output, timed right after the
    step) / step, which also charges the step's chunking of the product as outside work and
    carries the noise of two separate timings. The earlier step paths alternate
    with the current one in the same process, so all see the same load: "addmm" (the step
    before the 65k-latent work), "row_major" (b_enc folded into the GEMM, W_enc still stored
    row-major, so its gradient is transposed every step), "blocked" (the product and selection
    in 4,096-latent column blocks, merged per row), "plain_adam" (torch's fused Adam given the
    latents-major W_enc as it is, so it copies it first), "chunks_512mb"/"chunks_1gb" (fewer,
    larger product chunks) and "new" (the current step: W_enc latents-major, 256 MB chunks of
    whole rows). Each share is the median over the steps; each step's share and the load average
    at the start and end of the timed steps are in the JSON."""
    extra = ["--breakdown"] if args.breakdown else []
    res = run_one("saelab_topk.py", sys.executable,
                  ["--d", "768", "--m", "65536", "--k", "32", "--batch", "4096", "--steps",
                   str(args.wide_steps), "--warmup", "1", "--threads", str(args.threads),
                   "--compare-old", "--paths", args.wide_paths, *extra], args.threads)
    row = {k: res[k] for k in ("tokens_per_s", "median_step_s", "encoder_matmul_s",
                               "outside_encoder_share", "peak_rss_mb", "step_times_s",
                               "encoder_matmul_times_s", "pair_shares", "in_step_product_times_s",
                               "in_step_shares", "in_step_outside_share", "load_average_1_5_15")}
    row["old_paths"] = res["old_paths"]
    row["goal_outside_encoder_share"] = 0.25
    lines = [f"  {name}: step {r['median_step_s'] * 1e3:,.0f} ms; outside the product: "
             f"{r['in_step_outside_share']:.0%} in the step itself, "
             f"{r['outside_encoder_share']:.0%} against a lone product of "
             f"{r['encoder_matmul_s'] * 1e3:,.0f} ms"
             for name, r in [*res["old_paths"].items(), ("new", res)]]
    print("\n65,536 latents, k=32 (the step paths alternating in one process; goal ≤ 25% "
          "outside the encoder product):\n" + "\n".join(lines))
    if "breakdown_s" in res:
        row["breakdown_s"] = res["breakdown_s"]
        print("one profiled step of the current path, seconds per saelab function:\n" +
              "\n".join(f"  {v:7.3f}  {k}" for k, v in res["breakdown_s"].items() if v >= 0.005))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per library")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-peers", action="store_true", help="saelab only")
    p.add_argument("--peers", default="sae_lens,dictionary_learning",
                   help="which peers to run (comma-separated)")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--quick", action="store_true", help="smaller scaling table")
    p.add_argument("--skip-wide", action="store_true", help="skip the 65,536-latent row")
    p.add_argument("--wide-only", action="store_true", help="only the 65,536-latent row")
    p.add_argument("--wide-steps", type=int, default=3, help="timed steps of the wide row")
    p.add_argument("--wide-paths", default="addmm,row_major,new",
                   help="step paths the wide row alternates (comma-separated; 'new' is required)")
    p.add_argument("--skip-bf16", action="store_true", help="no saelab bf16 rounds")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile one 65,536-latent step: seconds per saelab function")
    args = p.parse_args()
    if args.wide_only:
        print(json.dumps({"wide_65536": wide_row(args)}))
        return
    base = ["--d", "768", "--m", "16384", "--k", "32", "--batch", "4096",
            "--steps", str(args.steps), "--threads", str(args.threads)]
    peak32 = matmul_peak(torch.float32, args.threads)
    # A CPU without native bf16 GEMM runs this at well under 1 GFLOP/s: probe a small shape.
    peak16 = matmul_peak(torch.bfloat16, args.threads, n=512, m=2048, repeats=2)
    native_bf16 = native_low_precision_matmul()
    encoder_flops = 2 * 768 * 16384
    bound = peak32 / encoder_flops
    print(f"fp32 matmul peak {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s "
          f"(native bf16: {native_bf16}); "
          f"encoder-only bound {bound:,.0f} tokens/s", file=sys.stderr)

    runs: dict[str, list[dict]] = {"saelab": [], "saelab_bf16": []}
    libs = [("saelab", "saelab_topk.py", sys.executable, [])]
    if not args.skip_peers:
        ensure_peer_venv()
        peers = {"sae_lens": "saelens_topk.py", "dictionary_learning": "dictlearn_topk.py"}
        for name in args.peers.split(","):
            if name not in peers:
                raise SystemExit(f"--peers takes {sorted(peers)}, got {name!r}")
            runs[name] = []
            libs.append((name, peers[name], str(PEER_PY), []))
    if not args.skip_bf16:
        libs.append(("saelab_bf16", "saelab_topk.py", sys.executable, ["--dtype", "bfloat16"]))
    else:
        del runs["saelab_bf16"]
    for r in range(args.rounds):
        for name, script, python, extra in libs:
            res = run_one(script, python, base + extra, args.threads)
            runs[name].append(res)
            print(f"round {r + 1}: {name:20s} {res['tokens_per_s']:8,.0f} tokens/s  "
                  f"peak RSS {res['peak_rss_mb']:,.0f} MB", file=sys.stderr)

    summary = {}
    for name, results in runs.items():
        tps = [x["tokens_per_s"] for x in results]
        summary[name] = {"tokens_per_s": statistics.median(tps), "all_tokens_per_s": tps,
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in results)}
    s = summary["saelab"]["tokens_per_s"]
    ratios = {f"saelab_over_{n}": s / summary[n]["tokens_per_s"]
              for n in ("sae_lens", "dictionary_learning") if n in summary}
    if "saelab_bf16" in summary:
        ratios["bf16_over_fp32"] = summary["saelab_bf16"]["tokens_per_s"] / s
    result = {
        "machine": {"threads": args.threads, "fp32_matmul_gflops": peak32 / 1e9,
                    "bf16_matmul_gflops": peak16 / 1e9, "native_bf16_matmul": native_bf16,
                    "encoder_bound_tokens_per_s": bound},
        "libraries": summary, "ratios": ratios,
        "saelab_share_of_encoder_bound": s / bound,
        "saelab_share_of_fp32_peak_encoder_flops": s * encoder_flops / peak32,
    }
    print("\n| library | tokens/s | peak RSS MB |\n|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['tokens_per_s']:,.0f} | {row['peak_rss_mb']:,.0f} |")
    print("\nratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    print(f"saelab fp32 = {result['saelab_share_of_encoder_bound']:.0%} of the encoder-only bound "
          f"({bound:,.0f} tokens/s at {peak32 / 1e9:.0f} GFLOP/s)")

    if not args.skip_scaling:
        ms = [4096, 16384] if args.quick else [4096, 16384, 65536]
        ks = [16, 64] if args.quick else [16, 64, 256]
        table = []
        print("\n| latents | k | tokens/s | step ms | encoder matmul ms (same process) | rest ms "
              "| share outside encoder | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for m in ms:
            for k in ks:
                res = run_one("saelab_topk.py", sys.executable,
                              ["--d", "768", "--m", str(m), "--k", str(k), "--batch", "4096",
                               "--steps", "3", "--warmup", "1", "--threads", str(args.threads)],
                              args.threads)
                enc_ms = res["encoder_matmul_s"] * 1e3
                step_ms = res["median_step_s"] * 1e3
                row = {"m": m, "k": k, "tokens_per_s": res["tokens_per_s"], "step_ms": step_ms,
                       "encoder_matmul_ms": enc_ms, "rest_ms": step_ms - enc_ms,
                       "outside_encoder_share": res["outside_encoder_share"],
                       "peak_rss_mb": res["peak_rss_mb"]}
                table.append(row)
                print(f"| {m} | {k} | {row['tokens_per_s']:,.0f} | {step_ms:.0f} | {enc_ms:.0f} | "
                      f"{row['rest_ms']:.0f} | {row['outside_encoder_share']:.0%} | "
                      f"{row['peak_rss_mb']:,.0f} |")
        result["scaling"] = table
    if not args.skip_wide:
        result["wide_65536"] = wide_row(args)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
