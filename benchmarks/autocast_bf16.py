"""bf16 autocast against fp32 on this machine: training speed and what it costs in accuracy.

For each configuration (TopK on the sparse path, JumpReLU dense) two trainers start from the
same initialisation and train on the same activation stream (sparse mixtures of random
directions, ``benchmarks/peers/common.activation_pool``), one with ``autocast="off"``, one with
``autocast="bf16"``; their steps alternate in one process, so both see the same machine load.
Reported per configuration: median step time and tokens/s of each, the bf16/fp32 speed ratio,
explained variance of each on a held-out batch after training (evaluated in fp32), and the
largest weight difference between the two. On a CPU without native bf16 matrix multiply
(AVX2-only) bf16 is expected to be slower; on GPUs and AVX512-BF16/AMX CPUs faster.

Usage: OMP_NUM_THREADS=1 python benchmarks/autocast_bf16.py [--steps 30] [--threads 1]
Prints a JSON document last (also written to benchmarks/results/autocast_bf16.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

from common import activation_pool  # noqa: E402

from saelab.data import IteratorSource  # noqa: E402
from saelab.metrics.core import explained_variance  # noqa: E402
from saelab.ops import native_low_precision_matmul  # noqa: E402
from saelab.registry import config_from_dict  # noqa: E402
from saelab.training import TrainConfig, Trainer  # noqa: E402

CONFIGS = [
    # small enough that bf16's slow fallback kernel on AVX2-only CPUs finishes in minutes
    {"name": "topk_sparse", "d": 256, "m": 4096, "batch": 1024,
     "sae": {"architecture": "topk", "k": 32}},
    {"name": "jumprelu_dense", "d": 128, "m": 1024, "batch": 256,
     "sae": {"architecture": "jumprelu"}},
]


def run_config(spec: dict, steps: int, tmp: Path) -> dict:
    pool = activation_pool(spec["d"], spec["batch"], n_batches=5)
    train_pool, held_out = pool[:-1], pool[-1]
    trainers = {}
    for mode in ("off", "bf16"):
        cfg = TrainConfig(total_tokens=spec["batch"] * 10**6, batch_size=spec["batch"], lr=3e-3,
                          lr_warmup_steps=0, checkpoint_every=0, progress=False,
                          init_samples=spec["batch"], measure_peak=False, log_proxies=False,
                          dead_after_tokens=10**9, autocast=mode)
        source = IteratorSource(lambda: iter(train_pool), d_in=spec["d"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the no-native-bf16 warning: this is the measurement
            t = Trainer({"sae": config_from_dict({**spec["sae"], "d_sae": spec["m"]})}, cfg,
                        source, tmp / f"{spec['name']}_{mode}")
        t.initialise()
        trainers[mode] = t
    times: dict[str, list[float]] = {"off": [], "bf16": []}
    for i in range(steps):
        batch = train_pool[i % len(train_pool)]
        for mode, t in trainers.items():  # alternate: equal load for both
            start = time.perf_counter()
            t.train_step(batch)
            times[mode].append(time.perf_counter() - start)
    row: dict = {"config": spec["name"], "d": spec["d"], "latents": spec["m"],
                 "batch": spec["batch"], "steps": steps}
    for mode, t in trainers.items():
        sae = t.saes["sae"].eval()
        with torch.no_grad():
            x = held_out * t.scale
            ev = explained_variance(x, sae(x))
        step = statistics.median(times[mode][1:])  # the first step warms caches up
        label = "fp32" if mode == "off" else "bf16"
        row[f"{label}_step_s"] = step
        row[f"{label}_tokens_per_s"] = spec["batch"] / step
        row[f"{label}_explained_variance"] = ev
    row["bf16_speed_over_fp32"] = row["bf16_tokens_per_s"] / row["fp32_tokens_per_s"]
    row["explained_variance_difference"] = (row["bf16_explained_variance"]
                                            - row["fp32_explained_variance"])
    a, b = (trainers[m].saes["sae"].state_dict() for m in ("off", "bf16"))
    row["max_weight_difference"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="training steps per mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", help="run only the configuration of this name")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| config | fp32 tokens/s | bf16 tokens/s | bf16/fp32 speed | fp32 EV | bf16 EV | "
          "max weight diff |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in CONFIGS:
            if args.only and spec["name"] != args.only:
                continue
            row = run_config(spec, args.steps, Path(tmp))
            rows.append(row)
            print(f"| {row['config']} | {row['fp32_tokens_per_s']:,.0f} | "
                  f"{row['bf16_tokens_per_s']:,.0f} | {row['bf16_speed_over_fp32']:.2f} | "
                  f"{row['fp32_explained_variance']:.4f} | {row['bf16_explained_variance']:.4f}"
                  f" | {row['max_weight_difference']:.2g} |", flush=True)
    native = native_low_precision_matmul()
    verdict = ("bf16 is faster here" if all(r["bf16_speed_over_fp32"] > 1 for r in rows)
               else "bf16 is not faster here" + ("" if native else
                                                 " (no native bf16 matrix multiply)"))
    result = {"machine": {"threads": args.threads, "native_bf16_matmul": native},
              "rows": rows, "conclusion": verdict}
    print(verdict, file=sys.stderr)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "autocast_bf16.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
