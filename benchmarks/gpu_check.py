"""The GPU checks of issue 15, in one call that takes a few minutes on one CUDA GPU.

Not runnable without a GPU (it stops at once with a clear message). Stages, each a bounded
subprocess; a failing stage is recorded and the next one still runs:

1. ``env``: torch, CUDA and the GPU's name.
2. ``tests``: the device tests and the sparse-vs-dense equality tests, parametrised over the
   available devices (so on CUDA here): ``tests/test_devices.py``, ``tests/test_sparse_path.py``,
   ``tests/test_autocast.py``.
3. ``train``: ``saelab train --device cuda`` on a small generated activation file, in fp32 and
   with ``--autocast bf16``; the final explained variance of each from metrics.jsonl.
4. ``data_parallel``: a 1-rank NCCL process group driving the data-parallel trainer on the GPU
   (every all-reduce goes through NCCL) must give the same weights as a plain GPU run.
5. ``throughput``: ``benchmarks/peers/saelab_topk.py`` on the GPU: 16,384 latents fp32 and bf16
   autocast, and 65,536 latents with the old and new step alternating (share of the step outside
   the encoder product).

Usage: python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json]
Prints one JSON document last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

DP_SNIPPET = r"""
import json, os, sys
from pathlib import Path
import torch, torch.distributed as dist
from saelab.data.arrays import ArrayFileSource
from saelab.distributed import DataParallel
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer
data, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = TrainConfig(total_tokens=512 * 20, batch_size=512, checkpoint_every=10, progress=False,
                  measure_peak=False, device="cuda", dead_after_tokens=2048)
saes = {"topk": config_from_dict({"architecture": "topk", "d_sae": 1024, "k": 8}),
        "batchtopk": config_from_dict({"architecture": "batchtopk", "d_sae": 1024, "k": 8})}
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
dist.init_process_group("nccl", rank=0, world_size=1)
weights = {}
for name, group in (("plain", None), ("nccl", DataParallel(0, 1, 0))):
    t = Trainer(saes, cfg, ArrayFileSource(data, seed=0), out / name, dist=group)
    weights[name] = {n: {k: v.cpu() for k, v in s.state_dict().items()}
                     for n, s in t.fit().items()}
dist.destroy_process_group()
diff = max(float((weights["plain"][n][k] - weights["nccl"][n][k]).abs().max())
           for n in saes for k in weights["plain"][n])
print(json.dumps({"max_weight_difference": diff, "equal": diff < 1e-5}))
"""


def stage(name: str, cmd: list[str], timeout: int, results: dict, **kw: object) -> str:
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              **kw)  # type: ignore[call-overload]
        ok, out = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        ok, out = False, f"timed out after {timeout} s"
    results[name] = {"ok": ok, "seconds": round(time.time() - start, 1),
                     "tail": out.strip().splitlines()[-12:]}
    print(f"[{name}] {'ok' if ok else 'FAILED'} in {time.time() - start:.0f} s", file=sys.stderr)
    return out if ok else ""


def last_json(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def final_ev(run: Path) -> float | None:
    log = run / "metrics.jsonl"
    if not log.exists():
        return None
    last = json.loads(log.read_text().splitlines()[-1])
    return last.get("explained_variance")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: this PyTorch sees no CUDA GPU; run it on a GPU machine")
    results: dict = {"env": {"torch": torch.__version__, "cuda": torch.version.cuda,
                             "gpu": torch.cuda.get_device_name(0),
                             "gpus": torch.cuda.device_count()}}
    print(json.dumps(results["env"]), file=sys.stderr)
    stage("tests", [PY, "-m", "pytest", "-q", "-x", "tests/test_devices.py",
                    "tests/test_sparse_path.py", "tests/test_autocast.py"], 150, results)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        import numpy as np

        gen = np.random.default_rng(0)
        feats = gen.normal(size=(512, 256)).astype(np.float32)
        codes = (gen.random((16384, 512)) * (gen.random((16384, 512)) > 0.97)).astype(np.float32)
        np.save(tmp / "acts.npy", codes @ feats)
        base = [PY, "-m", "saelab.cli", "train", "--data", str(tmp / "acts.npy"), "--arch",
                "topk", "--k", "16", "--d-sae", "4096", "--total-tokens", str(16384 * 4),
                "--batch-size", "1024", "--device", "cuda", "--lr-warmup-steps", "10"]
        train: dict = {}
        for mode in ("off", "bf16"):
            run = tmp / f"train_{mode}"
            if stage(f"train_{mode}", [*base, "--autocast", mode, "--out", str(run)], 120,
                     results):
                train[mode] = final_ev(run)
        results["train_explained_variance"] = train
        out = stage("data_parallel", [PY, "-c", DP_SNIPPET, str(tmp / "acts.npy"),
                                      str(tmp / "dp")], 120, results)
        results["data_parallel_result"] = last_json(out) if out else None
    thr: dict = {}
    runner = [PY, str(HERE / "peers" / "saelab_topk.py"), "--d", "768", "--k", "32",
              "--batch", "4096", "--device", "cuda", "--threads", "4"]
    env = {**os.environ, "PYTHONPATH": str(HERE / "peers")}
    for label, extra in (("m16384_fp32", ["--m", "16384", "--steps", "10"]),
                         ("m16384_bf16", ["--m", "16384", "--steps", "10", "--autocast", "bf16"]),
                         ("m65536_old_vs_new", ["--m", "65536", "--steps", "5",
                                                "--compare-old"])):
        out = stage(f"throughput_{label}", [*runner, *extra], 120, results, env=env,
                    )
        thr[label] = last_json(out) if out else None
    results["throughput"] = thr
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
