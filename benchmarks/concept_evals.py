"""Concept-level evaluations (issue 12) over the nine architectures, on the Othello model and on
the packaged MiniLM, at matched L0, over seeds.

For each model: the concept suite's inputs are collected once (``saelab.evals.concepts``);
SAEs of every architecture are trained on that model's activations (Othello: residual stream of
generated games disjoint from the evaluation games; MiniLM: the suite's own inputs — text-task
texts and vocabulary words, unlabelled — plus the shipped English corpus). The TopK family is
trained at k = ``--k``; the penalty-based architectures at a coefficient chosen from a 3-point
sweep on seed 0 (the point whose L0 on the suite's inputs is closest to k) and reused for the
other seeds. A BatchTopK sweep over k and over width (seed 0) shows how MS and cone containment
move with sparsity and width. Every SAE then runs the whole suite.

Prints one JSON line per model with per-architecture means and 95% t-intervals over seeds, the
sweep, and the published directions checked; writes ``results.json``, ``table.md`` and
``comparison.png`` under ``--out``.

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/concept_evals.py [--seeds 3] [--tokens 40000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from saelab.boardgame.demo import train_saes

from saelab.architectures.base import SAE
from saelab.boardgame.activations import write_npy
from saelab.evals import concepts
from saelab.evals.concept_data import sae_l0
from saelab.metrics.concepts import Interval
from saelab.registry import config_from_dict

FIXED_K = ("topk", "batchtopk", "matryoshka", "ordered")
SWEEP: dict[str, tuple[str, tuple[float, ...]]] = {
    "relu": ("l1_coefficient", (2.0, 6.0, 20.0)),
    "panneal": ("l1_coefficient", (2.0, 6.0, 20.0)),
    "gated": ("l1_coefficient", (4.0, 12.0, 40.0)),
    "gated_panneal": ("l1_coefficient", (4.0, 12.0, 40.0)),
    "jumprelu": ("l0_coefficient", (10.0, 30.0, 100.0)),
}
METRICS = ("l0", "absorption", "full_absorption", "probe_k1", "probe_k20", "full_probe",
           "ms_latents", "ms_neurons", "cone_containment", "cone_geometric", "cone_semantic")


def fixed_configs(k: int, expansion: int, steps: int) -> dict[str, dict[str, Any]]:
    late = {"threshold_start_step": steps // 2}
    return {
        "topk": {"architecture": "topk", "k": k, "expansion": expansion},
        "batchtopk": {"architecture": "batchtopk", "k": k, "expansion": expansion, **late},
        "matryoshka": {"architecture": "matryoshka", "k": k, "expansion": expansion,
                       "group_fractions": [0.2, 0.3, 0.5], **late},
        "ordered": {"architecture": "ordered", "k": k, "expansion": expansion},
    }


def sweep_values(arch: str, scale: float) -> tuple[float, ...]:
    return tuple(v * scale for v in SWEEP[arch][1])


def sweep_configs(expansion: int, chosen: dict[str, float] | None, scale: float = 1.0
                  ) -> dict[str, dict[str, Any]]:
    """Every sweep point (seed 0), or only the chosen coefficient per architecture."""
    out = {}
    for arch, (key, _) in SWEEP.items():
        for c in ([chosen[arch]] if chosen else sweep_values(arch, scale)):
            out[f"{arch}@{c:g}"] = {"architecture": arch, key: c, "expansion": expansion}
    return out


def scaling_configs(k: int, expansion: int, steps: int) -> dict[str, dict[str, Any]]:
    """BatchTopK over k (width fixed) and over width (k fixed)."""
    out = {}
    for kk in sorted({max(2, k // 4), max(2, k // 2), k, 2 * k}):
        out[f"btk_k{kk}_x{expansion}"] = {"architecture": "batchtopk", "k": kk,
                                          "expansion": expansion,
                                          "threshold_start_step": steps // 2}
    for ex in sorted({max(1, expansion // 2), expansion, 2 * expansion}):
        out[f"btk_k{k}_x{ex}"] = {"architecture": "batchtopk", "k": k, "expansion": ex,
                                  "threshold_start_step": steps // 2}
    return out


def training_rows(model: str, data: concepts.ConceptData, n_rows: int, seed: int) -> np.ndarray:
    """Activations the SAEs train on (see the module docstring)."""
    if model == "othello":
        from saelab.boardgame import lm
        from saelab.boardgame.activations import game_activations

        lm_model, game = lm.load_game_lm("othello")
        layer = int(data.hook.rsplit(".", 1)[1])
        n_games = max(20, n_rows // 55)
        return game_activations(lm_model, game, layer, n_games)[:n_rows]
    from saelab.evals.concept_data import load_text_model, text_activations
    from saelab.text import corpus_path

    parts = [data.all_token_acts]
    if data.words is not None:
        parts.append(data.words.acts_ND)
    have = sum(p.shape[0] for p in parts)
    if have < n_rows:  # top up with the shipped corpus
        loaded = load_text_model("")
        paragraphs = [p for p in corpus_path().read_text().split("\n\n") if p.strip()]
        rng = np.random.default_rng(seed)
        texts = [paragraphs[i] for i in rng.permutation(len(paragraphs))[:(n_rows - have) // 40]]
        inputs, _ = text_activations(loaded.model, loaded.tokenizer, data.hook, texts, 128,
                                     embed=False)
        parts.append(inputs.acts_TD)
    rows = torch.cat(parts).numpy().astype(np.float32)
    return rows[np.random.default_rng(seed).permutation(rows.shape[0])[:n_rows]]


def train(acts_path: Path, settings: dict[str, dict[str, Any]], out: Path, args: argparse.Namespace,
          seed: int) -> dict[str, SAE]:
    configs = {name: config_from_dict(s) for name, s in settings.items()}
    return train_saes(acts_path, configs, out, args.tokens, args.batch_size, args.lr, seed=seed)


def run_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = concepts.ConceptSuiteConfig(
        model=model if model == "othello" else "", train_games=args.eval_games,
        test_games=args.eval_games, per_class=args.per_class, ms_inputs=args.ms_inputs,
        max_length=args.max_length)
    cfg.probing.n_splits = 3
    cfg.absorption.max_words = args.words
    cfg.absorption.min_probe_f1 = args.min_probe_f1
    cfg.absorption.min_letters = 5
    progress = concepts.Progress()
    data = concepts.collect(cfg, progress)
    collect_s = time.perf_counter() - start
    out = args.out / model
    acts_path = write_npy(out / "acts.npy", training_rows(model, data, args.rows, 0))
    progress.stage(f"training SAEs on {args.rows} rows of width {data.all_token_acts.shape[1]}")
    steps = args.tokens // args.batch_size
    eval_acts = data.all_token_acts
    chosen: dict[str, float] = {}
    saes: dict[str, SAE] = {}
    seeds_of: dict[str, tuple[str, int]] = {}  # SAE name -> (architecture, seed)
    sweep_l0: dict[str, float] = {}
    for seed in range(args.seeds):
        settings = {**fixed_configs(args.k, args.expansion, steps),
                    **sweep_configs(args.expansion, chosen or None, args.sweep_scale)}
        if seed == 0 and not args.no_scaling:
            settings.update(scaling_configs(args.k, args.expansion, steps))
        trained = train(acts_path, settings, out / f"saes_seed{seed}", args, seed)
        if seed == 0:
            for name, sae in trained.items():
                if "@" in name:
                    sweep_l0[name] = sae_l0(sae, eval_acts)
            for arch in SWEEP:
                chosen[arch] = min(sweep_values(arch, args.sweep_scale),
                                   key=lambda c, a=arch: abs(sweep_l0[f"{a}@{c:g}"] - args.k))
        for name, sae in trained.items():
            arch = name.split("@")[0]
            if "@" in name and name != f"{arch}@{chosen[arch]:g}":
                continue
            saes[f"{name}/s{seed}"] = sae
            seeds_of[f"{name}/s{seed}"] = (arch if not name.startswith("btk_") else name, seed)
        progress.stage(f"seed {seed} trained ({time.perf_counter() - start:.0f}s so far)")
    train_s = time.perf_counter() - start - collect_s
    results = concepts.run_suite(saes, cfg, data, progress)
    rows = concepts.summary_rows(results)
    for r in rows:
        (out / "json").mkdir(parents=True, exist_ok=True)
        results[str(r["sae"])].write(out / "json" / (str(r["sae"]).replace("/", "_") + ".json"))
    by_arch: dict[str, dict[str, Interval]] = {}
    for arch in dict.fromkeys(a for a, _ in seeds_of.values()):
        mine = [r for r in rows if seeds_of[str(r["sae"])][0] == arch]
        by_arch[arch] = {m: Interval.of([float(r[m]) for r in mine]) for m in METRICS}
    return {"model": model, "hook": data.hook, "width": int(eval_acts.shape[1]),
            "n_eval_tokens": int(eval_acts.shape[0]), "sweep_l0": sweep_l0,
            "chosen_coefficients": chosen, "rows": rows, "by_arch": by_arch,
            "seconds": {"collect": collect_s, "train": train_s,
                        "total": time.perf_counter() - start}}


def _mean(result: dict[str, Any], arch: str, metric: str) -> float:
    iv = result["by_arch"].get(arch, {}).get(metric)
    return iv.mean if iv is not None else math.nan


def findings(results: dict[str, dict[str, Any]], k: int) -> dict[str, str]:
    """The published directions, checked on our numbers (mean over seeds)."""
    out = {}
    for model, r in results.items():
        if model != "othello":
            m, b = _mean(r, "matryoshka", "absorption"), _mean(r, "batchtopk", "absorption")
            out[f"{model}: Matryoshka absorbs less than BatchTopK (SAEBench)"] = (
                f"{'yes' if m < b else 'no'}: {m:.3f} vs {b:.3f}" if math.isfinite(m + b)
                else "undefined (absorption NaN)")
        archs = [a for a in r["by_arch"] if not a.startswith("btk_")]
        above = [a for a in archs if _mean(r, a, "ms_latents") > _mean(r, a, "ms_neurons")]
        out[f"{model}: SAE latents have higher MS than neurons (Pach et al.)"] = (
            f"{len(above)}/{len(archs)} architectures; neurons "
            f"{_mean(r, archs[0], 'ms_neurons'):.3f}")
        widths = sorted((int(a.split("_x")[1]), _mean(r, a, "ms_latents"))
                        for a in r["by_arch"] if a.startswith(f"btk_k{k}_x"))
        if widths:
            out[f"{model}: MS rises with width (BatchTopK k={k})"] = (
                f"{'yes' if all(b[1] > a[1] for a, b in itertools.pairwise(widths)) else 'no'}: "
                + ", ".join(f"x{w} {v:.3f}" for w, v in widths))
        cont = {a: _mean(r, a, "cone_containment") for a in archs}
        best = max(cont, key=lambda a: cont[a] if math.isfinite(cont[a]) else -1)
        out[f"{model}: BatchTopK approximates concept cones best (Rocchi-Henry et al.)"] = (
            f"{'yes' if best == 'batchtopk' else 'no'}: best {best} {cont[best]:.3f}, "
            f"batchtopk {cont.get('batchtopk', math.nan):.3f}")
        ks = sorted((int(a.split("_k")[1].split("_")[0]), _mean(r, a, "cone_containment"))
                    for a in r["by_arch"] if a.startswith("btk_k") and
                    a.endswith(f"_x{r['expansion']}"))
        ms_ks = sorted((int(a.split("_k")[1].split("_")[0]), _mean(r, a, "ms_latents"))
                       for a in r["by_arch"] if a.startswith("btk_k") and
                       a.endswith(f"_x{r['expansion']}"))
        if len(ms_ks) >= 2:  # Pach et al.: MS rises with sparsity, i.e. falls as k grows
            out[f"{model}: MS rises with sparsity (falls with k, BatchTopK)"] = (
                f"{'yes' if all(b[1] < a[1] for a, b in itertools.pairwise(ms_ks)) else 'no'}: "
                + ", ".join(f"k={kk} {v:.3f}" for kk, v in ms_ks))
        if len(ks) >= 3:
            peak = max(range(len(ks)), key=lambda i: ks[i][1])
            out[f"{model}: containment peaks at intermediate sparsity (BatchTopK)"] = (
                f"{'yes' if 0 < peak < len(ks) - 1 else 'no'}: " +
                ", ".join(f"k={kk} {v:.3f}" for kk, v in ks))
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | SAE | " + " | ".join(METRICS) + " |", "|---" * (2 + len(METRICS)) + "|"]
    for model, r in results.items():
        for arch, ivs in r["by_arch"].items():
            lines.append(f"| {model} | {arch} | " + " | ".join(str(ivs[m]) for m in METRICS)
                         + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_concepts"))
    parser.add_argument("--models", nargs="+", default=["othello", "minilm"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=8, help="target L0")
    parser.add_argument("--expansion", type=int, default=2)
    parser.add_argument("--rows", type=int, default=30_000, help="training rows per model")
    parser.add_argument("--tokens", type=int, default=40_000, help="training rows seen per SAE")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-games", type=int, default=60)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--ms-inputs", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text (MiniLM)")
    parser.add_argument("--words", type=int, default=30_000, help="vocabulary words (absorption)")
    parser.add_argument("--min-probe-f1", type=float, default=0.3,
                        help="absorption letter filter (SAEBench: 0.6)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the BatchTopK sweep")
    parser.add_argument("--sweep-scale", type=float, default=1.0,
                        help="multiply the penalty coefficients of the L0 sweep")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for model in args.models:
        results[model] = run_model(model, args)
        results[model]["expansion"] = args.expansion
        summary = {a: {m: str(iv) for m, iv in ivs.items()}
                   for a, ivs in results[model]["by_arch"].items()}
        print(json.dumps({"model": model, "by_arch": summary,
                          "seconds": results[model]["seconds"]}), flush=True)
    found = findings(results, args.k)
    text = table(results)
    print(text)
    print(json.dumps({"findings": found}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "findings": found,
         **{m: {**r, "by_arch": {a: {k: vars(iv) for k, iv in ivs.items()}
                                 for a, ivs in r["by_arch"].items()}}
            for m, r in results.items()}}, indent=1, default=float))
    all_rows = [{**row, "sae": f"{m}:{row['sae']}"} for m, r in results.items()
                for row in r["rows"]]
    concepts.plot_comparison(all_rows, args.out / "comparison.png")
    print(f"wrote {args.out}/results.json, table.md, comparison.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
