"""AlignSAE on the shipped biography GPT-2 (issue 17): the model's answer accuracy on held-out
question phrasings, then per seed stage 1 + stage 2 AlignSAEs and a plain ReLU SAE per layer,
their slot accuracy, and the concept-swap success against α and layer (AlignSAE slots vs the
plain SAE's best-matching latents). Prints one JSON document; writes the report (report.md,
swap.png, results.json) to --out/report.

The paper (Yang et al. 2025) reports ~85% swap success at α ≈ 2 in middle layers and several
times the baseline; this checks what reproduces on a 4-block model trained here.

Seeds train and evaluate in parallel processes (one thread each).

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/alignsae_swap.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from saelab.alignsae.evaluate import (
    SwapConfig,
    conclusion,
    evaluate_runs,
    summarise,
    warnings_for,
    write_report,
)
from saelab.alignsae.pipeline import AlignSAERunConfig, run_training
from saelab.biography.lm import (
    PRETRAINED_DIR,
    answer_accuracy,
    load_bio_lm,
    people_of,
    read_metadata,
)
from saelab.biography.task import questions


def _seed_job(args: argparse.Namespace, seed: int) -> dict:
    """Train and evaluate one seed (run in its own process: seeds train in parallel)."""
    torch.set_num_threads(1)
    start = time.time()
    cfg = AlignSAERunConfig(layers=args.layers, seed=seed, d_sae=args.d_sae,
                            stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs,
                            progress=False)
    run = run_training(cfg, Path(args.out) / f"seed{seed}")
    trained = time.time()
    result = evaluate_runs([run], SwapConfig(alphas=args.alphas, max_cases=args.max_cases),
                           progress=False)
    result["seconds"] = {"training": round(trained - start, 1),
                         "evaluation": round(time.time() - trained, 1)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--stage1-epochs", type=int, default=20)
    p.add_argument("--stage2-epochs", type=int, default=60)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--max-cases", type=int, default=200)
    p.add_argument("--out", default="runs/bench_alignsae")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    with ProcessPoolExecutor(len(args.seeds), mp_context=mp.get_context("spawn")) as pool:
        jobs = [pool.submit(_seed_job, args, seed) for seed in args.seeds]
        model, lm_cfg = load_bio_lm()  # meanwhile: the model's own accuracy
        held_out = answer_accuracy(model, questions(people_of(lm_cfg), held_out=True))
        per_seed = [job.result() for job in jobs]
    per_run = [r for result in per_seed for r in result["runs"]]
    layers = per_seed[0]["layers"]
    results = {"runs": per_run, "layers": layers, "summary": summarise(per_run, layers),
               "swap_settings": per_seed[0]["swap_settings"],
               "warnings": warnings_for(per_run, layers)}
    report = write_report(results, Path(args.out) / "report")
    doc = {
        "biography_model": {"held_out_answer_accuracy": held_out,
                            "shipped_training_seconds": read_metadata(PRETRAINED_DIR)[
                                "train_seconds"]},
        "settings": vars(args),
        "per_layer": {layer: {k: row[k] for k in ("slot_accuracy", "value_accuracy",
                                                  "baseline_slot_accuracy", "ev_stage1",
                                                  "ev_stage2", "ev_stage2_free_only",
                                                  "ev_baseline", "l0_baseline")}
                      | {"swap_alignsae": row["swap"]["alignsae"],
                         "swap_baseline": row["swap"]["baseline"],
                         "swap_alignsae_per_seed": row["swap_per_run"]["alignsae"],
                         "swap_baseline_per_seed": row["swap_per_run"]["baseline"],
                         "n_cases": row["n_cases"]}
                      for layer, row in results["summary"].items()},
        "conclusion": conclusion(results["summary"]),
        "warnings": results["warnings"],
        "report": str(report),
        "seconds": {"per_seed": [r["seconds"] for r in per_seed],
                    "total": round(time.time() - start, 1)},
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
