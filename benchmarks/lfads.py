"""AutoLFADS benchmark (issue 16), on synthetic Lorenz spiking data with ground truth.

Part ``failure`` — the failure and its fix: the same small-data LFADS run without coordinated
dropout (CD) and with it. Logs, every ``eval_every`` steps on the validation trials, the
ordinary validation loss (``valid_recon``: NLL of entries the model saw), the sample-validation
loss (``valid_sv``) and the rate R² against the true rates. Prints, per run, the Spearman
correlation of each loss with rate R² over training (a usable selection metric has a strongly
negative one), the R² where each loss is lowest against the best R², and writes
``lfads_failure.png``.

Part ``pbt`` — PBT-tuned (AutoLFADS on Ray Tune, selected by valid_sv) against the default
hyperparameters, across training-set sizes and seeds: test-trial rate R² and co-bps. Each
default run and each PBT worker gets the same number of steps (PBT costs ``population`` times
the compute).

Part ``throughput`` — training trials/s (wall and per CPU-second, one thread) for stated model
sizes.

Usage (bounded; the numbers in the issue report were made with the flags shown there):
  OMP_NUM_THREADS=1 nice -n 10 python benchmarks/lfads.py --parts failure pbt throughput \
      --out runs/bench_lfads
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from saelab.lfads.autolfads import AutoLFADSConfig, best_trial_folder, run_autolfads
from saelab.lfads.config import (
    LFADSModelConfig,
    LFADSRunConfig,
    LFADSTrainConfig,
    SyntheticConfig,
)
from saelab.lfads.data import synthetic
from saelab.lfads.evaluate import evaluate
from saelab.lfads.trainer import LFADSTrainer, load_model
from saelab.sweep.config import PBTConfig

#: the benchmark's model: small enough for a shared 2-core CPU
SMALL = dict(ic_enc_dim=32, ci_enc_dim=16, con_dim=16, co_dim=4, gen_dim=32, fac_dim=8)


def data_cfg(args: argparse.Namespace, n_trials: int, seed: int) -> SyntheticConfig:
    return SyntheticConfig(system="lorenz", n_trials=n_trials, n_test=args.n_test,
                           n_neurons=30, n_heldout=10, n_bins=args.n_bins, seed=seed)


def read_log(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def failure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = synthetic(data_cfg(args, args.small_n, seed=0))
    runs: dict[str, Any] = {}
    curves = {}
    for name, cd in (("no_cd", 0.0), ("cd", args.cd_rate)):
        if name not in args.failure_runs:
            continue
        train = LFADSTrainConfig(steps=args.failure_steps, batch_size=args.small_n,
                                 lr=args.failure_lr, dropout=0.0, cd_rate=cd, sv_rate=0.2,
                                 kl_weight=args.failure_kl, l2_weight=args.failure_l2,
                                 kl_ramp_steps=100, l2_ramp_steps=100,
                                 eval_every=args.eval_every, checkpoint_every=0, threads=1,
                                 progress=False)
        folder = out / f"failure_{name}"
        model = LFADSModelConfig(**{**SMALL, "co_dim": args.failure_co_dim})
        trainer = LFADSTrainer(data, model, train, folder)
        trainer.fit()
        log = read_log(folder)
        curves[name] = log
        r2 = np.array([r["valid_rate_r2"] for r in log])
        summary: dict[str, Any] = {"cd_rate": cd,
                                   "best_rate_r2": float(r2.max()),
                                   "best_rate_r2_step": int(log[int(r2.argmax())]["step"]),
                                   "final_rate_r2": float(r2[-1])}
        for loss in ("valid_recon", "valid_sv"):
            values = np.array([r[loss] for r in log])
            at = int(values.argmin())
            summary[loss] = {
                "spearman_with_rate_r2": float(spearmanr(values, r2).statistic),
                "first": float(values[0]), "final": float(values[-1]),
                "min_step": int(log[at]["step"]), "rate_r2_at_min": float(r2[at])}
        result, _ = evaluate(trainer.model, data)
        summary["test"] = {k: v for k, v in asdict(result).items() if isinstance(v, float)}
        runs[name] = summary
        print(f"failure/{name}: {json.dumps(summary)}", file=sys.stderr)
    if len(curves) == 2:
        plot_failure(curves, out / "lfads_failure.png")
    return {"n_train_trials": args.small_n, "steps": args.failure_steps,
            "model": {**SMALL, "co_dim": args.failure_co_dim}, "runs": runs, "plot": str(out / "lfads_failure.png")}


def plot_failure(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (name, log) in zip(axes, curves.items(), strict=True):
        steps = [r["step"] for r in log]
        ax.plot(steps, [r["valid_recon"] for r in log], color="C0", label="ordinary valid loss")
        ax.plot(steps, [r["valid_sv"] for r in log], color="C1", label="sample-validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("Poisson NLL per entry")
        twin = ax.twinx()
        twin.plot(steps, [r["valid_rate_r2"] for r in log], color="C2", ls="--",
                  label="rate R² (truth)")
        twin.set_ylabel("rate R²")
        ax.set_title("without coordinated dropout" if name == "no_cd"
                     else "with coordinated dropout")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pbt_vs_default(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import ray

    rows = []
    steps = args.generations * args.steps_per_generation
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        full = synthetic(data_cfg(args, max(args.sizes), seed=seed))
        data_path = full.save(out / f"data_seed{seed}.npz")
        for size in args.sizes:
            data = full.subset(size)
            batch = min(args.batch_size, size)
            train = LFADSTrainConfig(steps=steps, batch_size=batch, seed=seed, threads=1,
                                     eval_every=args.steps_per_generation, checkpoint_every=0,
                                     kl_ramp_steps=steps // 4, l2_ramp_steps=steps // 4,
                                     progress=False)
            start = time.perf_counter()
            folder = out / f"default_n{size}_seed{seed}"
            LFADSTrainer(data, LFADSModelConfig(**SMALL), train, folder).fit()
            default, _ = evaluate(load_model(folder), data)
            t_default = time.perf_counter() - start
            run = LFADSRunConfig(data=str(data_path), n_train=size,
                                 model=LFADSModelConfig(**SMALL), train=train)
            auto = AutoLFADSConfig(population=args.population, generations=args.generations,
                                   steps_per_generation=args.steps_per_generation, seed=seed,
                                   num_cpus=args.ray_cpus,
                                   pbt=PBTConfig(quantile_fraction=0.25))
            start = time.perf_counter()
            pbt_out = out / f"pbt_n{size}_seed{seed}"
            workers = run_autolfads(run, auto, pbt_out)
            tuned, _ = evaluate(load_model(best_trial_folder(pbt_out, workers)), data)
            row = {"n_train": size, "seed": seed,
                   "default_rate_r2": default.rate_r2, "pbt_rate_r2": tuned.rate_r2,
                   "default_co_bps": default.co_bps, "pbt_co_bps": tuned.co_bps,
                   "true_co_bps": default.true_rates_co_bps,
                   "default_decoding_r2": default.decoding_r2,
                   "pbt_decoding_r2": tuned.decoding_r2,
                   "pbt_best_options": {k: workers[0][k] for k in
                                        ("lr", "dropout", "cd_rate", "kl_weight", "l2_weight")},
                   "exploits": sum(int(w["exploits"] or 0) for w in workers),
                   "seconds_default": round(t_default, 1),
                   "seconds_pbt": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"pbt: {json.dumps(row)}", file=sys.stderr)
    ray.shutdown()
    summary = {}
    for size in args.sizes:
        sel = [r for r in rows if r["n_train"] == size]
        summary[str(size)] = {key: {"mean": statistics.fmean(r[key] for r in sel),
                                    "per_seed": [round(r[key], 4) for r in sel]}
                              for key in ("default_rate_r2", "pbt_rate_r2", "default_co_bps",
                                          "pbt_co_bps", "true_co_bps")}
    return {"sizes": args.sizes, "seeds": args.seeds, "steps_per_model": steps,
            "population": args.population, "generations": args.generations,
            "model": SMALL, "default_options": {k: getattr(LFADSTrainConfig(), k) for k in
                                                ("lr", "dropout", "cd_rate", "kl_weight",
                                                 "l2_weight", "sv_rate")},
            "rows": rows, "summary": summary}


def throughput(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = synthetic(data_cfg(args, 256, seed=0))
    rows = []
    for name, dims in (("small (benchmark)", SMALL), ("default", {})):
        cfg = LFADSModelConfig(**dims)  # type: ignore[arg-type]
        trainer = LFADSTrainer(data, cfg, LFADSTrainConfig(batch_size=64, progress=False),
                               out / "unused")
        trainer.train_step()  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.throughput_steps):
            trainer.train_step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n_params = sum(p.numel() for p in trainer.model.parameters())
        trials = 64 * args.throughput_steps
        rows.append({"model": name, "dims": asdict(trainer.model.cfg), "parameters": n_params,
                     "bins": args.n_bins, "neurons": 40, "batch": 64,
                     "trials_per_s_wall": trials / wall, "trials_per_s_cpu": trials / cpu})
    return {"threads": 1, "rows": rows,
            "note": "trials/s per CPU-second is the figure to compare: the 2 cores were shared "
                    "with other jobs, so wall-clock rates understate an idle machine"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["failure", "pbt", "throughput"],
                   choices=["failure", "pbt", "throughput"])
    p.add_argument("--out", default="runs/bench_lfads")
    p.add_argument("--n-bins", type=int, default=30)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--small-n", type=int, default=60, help="training trials of the failure part")
    p.add_argument("--failure-steps", type=int, default=600)
    p.add_argument("--failure-lr", type=float, default=1e-2)
    p.add_argument("--failure-kl", type=float, default=0.01)
    p.add_argument("--failure-l2", type=float, default=0.01)
    p.add_argument("--failure-runs", nargs="+", default=["no_cd", "cd"],
                   help="which failure runs to train (finished runs are resumed, not retrained: "
                   "run them in parallel processes, then once more with both for the plot)")
    p.add_argument("--failure-co-dim", type=int, default=8,
                   help="inferred inputs of the failure part (the pass-through path)")
    p.add_argument("--cd-rate", type=float, default=0.3)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first_seed .. first_seed + seeds - 1 (split a run over processes)")
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--steps-per-generation", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--throughput-steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"args": vars(args)}
    parts = {"failure": failure, "pbt": pbt_vs_default, "throughput": throughput}
    for part in args.parts:
        start = time.perf_counter()
        doc[part] = parts[part](args, out)
        doc[part]["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
