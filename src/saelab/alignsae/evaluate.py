"""Evaluate trained AlignSAE runs (read-out metrics, concept-swap sweep over α and layers) and
write the report: results.json, report.md and the α-sweep plot swap.png.

Several runs (seeds) of the same settings are aggregated: each number is the mean over runs,
with the per-run values alongside.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.alignsae import metrics
from saelab.alignsae.pipeline import AlignSAERunConfig, load_layer, load_split, read_run_config
from saelab.alignsae.swap import swap_cases, swap_success
from saelab.biography.lm import load_bio_lm, people_of
from saelab.biography.task import RELATIONS, questions
from saelab.config import ConfigError, option
from saelab.io import atomic_write_bytes, atomic_write_json

#: stage 2 must keep the explained variance of stage 1 within this (the stated tolerance)
EV_TOLERANCE = 0.05


@dataclass
class SwapConfig:
    """Settings of the concept-swap sweep."""

    alphas: list[float] = option([0.0, 0.5, 1.0, 2.0, 4.0, 8.0], "target-slot values α swept")
    max_cases: int = option(600, "swap cases per layer (subsampled, seeded)")
    seed: int = option(0, "seed of the case subsample")

    def validate(self) -> None:
        if not self.alphas:
            raise ConfigError("give at least one α")
        if self.max_cases <= 0:
            raise ConfigError(f"max_cases must be positive, got {self.max_cases}")


def evaluate_layer(out: Path, cfg: AlignSAERunConfig, layer: int) -> dict[str, Any]:
    """Read-out metrics of one layer's SAEs on the held-out phrasings (and training ones)."""
    stage1, stage2, baseline = load_layer(out, cfg, layer)
    data = out / f"layer{layer}" / "data"
    acts, rel, tok = load_split(data, "eval")
    tr_acts, tr_rel, tr_tok = load_split(data, "train")
    matched = metrics.best_matching_latents(baseline, tr_acts, tr_rel, len(RELATIONS))
    return {
        "slot_accuracy": metrics.slot_accuracy(stage2, acts, rel),
        "slot_accuracy_train": metrics.slot_accuracy(stage2, tr_acts, tr_rel),
        "slot_accuracy_stage1": metrics.slot_accuracy(stage1, acts, rel),
        "value_accuracy": metrics.value_accuracy(stage2, acts, rel, tok),
        "value_accuracy_train": metrics.value_accuracy(stage2, tr_acts, tr_rel, tr_tok),
        "reconstruction_stage1": metrics.reconstruction(stage1, acts),
        "reconstruction_stage2": metrics.reconstruction(stage2, acts),
        "reconstruction_stage2_free_only": metrics.free_only_reconstruction(stage2, acts),
        "reconstruction_baseline": metrics.reconstruction(baseline, acts),
        "l0_alignsae": metrics.l0(stage2, acts),
        "l0_baseline": metrics.l0(baseline, acts),
        "baseline_matched_latents": matched.latents,
        "baseline_matched_correlation": matched.correlations,
        "baseline_slot_accuracy": metrics.matched_slot_accuracy(baseline, matched, acts, rel),
    }


def sweep_layer(out: Path, cfg: AlignSAERunConfig, layer: int, swap: SwapConfig,
                model: torch.nn.Module, cases: Any) -> dict[str, Any]:
    """Swap success per α for the AlignSAE slots and the baseline's matched latents."""
    _, stage2, baseline = load_layer(out, cfg, layer)
    tr_acts, tr_rel, _ = load_split(out / f"layer{layer}" / "data", "train")
    matched = metrics.best_matching_latents(baseline, tr_acts, tr_rel, len(RELATIONS))
    slots = [stage2.slot_latent(r) for r in range(len(RELATIONS))]
    result: dict[str, Any] = {"n_cases": len(cases), "alignsae": {}, "baseline": {}}
    for alpha in swap.alphas:
        result["alignsae"][str(alpha)] = swap_success(model, layer, stage2, cases, slots,
                                                      [1.0] * len(RELATIONS), alpha)
        result["baseline"][str(alpha)] = swap_success(model, layer, baseline, cases,
                                                      matched.latents, matched.on_values, alpha)
    return result


def evaluate_runs(runs: list[Path], swap: SwapConfig | None, progress: bool = True
                  ) -> dict[str, Any]:
    """Metrics (and, with ``swap``, the swap sweep) of every layer of every run."""
    cfgs = [read_run_config(r) for r in runs]
    layers = sorted(set(cfgs[0].layers).intersection(*[c.layers for c in cfgs]))
    if swap is not None:
        swap.validate()
    per_run: list[dict[str, Any]] = []
    for run, cfg in zip(runs, cfgs, strict=True):
        model, lm_cfg = load_bio_lm(cfg.model or None)
        cases = None
        if swap is not None:
            cases = swap_cases(model, people_of(lm_cfg), questions(people_of(lm_cfg), True),
                               swap.max_cases, swap.seed)
        doc: dict[str, Any] = {"run": str(run), "seed": cfg.seed, "layers": {}}
        for layer in layers:
            if progress:
                print(f"alignsae: evaluating {run} layer {layer}", file=sys.stderr, flush=True)
            entry = evaluate_layer(run, cfg, layer)
            if swap is not None:
                entry["swap"] = sweep_layer(run, cfg, layer, swap, model, cases)
            doc["layers"][str(layer)] = entry
        per_run.append(doc)
    return {"runs": per_run, "layers": layers, "summary": summarise(per_run, layers),
            "swap_settings": None if swap is None else {"alphas": swap.alphas,
                                                        "max_cases": swap.max_cases,
                                                        "seed": swap.seed},
            "warnings": warnings_for(per_run, layers)}


SUMMARY_KEYS = ("slot_accuracy", "value_accuracy", "baseline_slot_accuracy", "l0_alignsae",
                "l0_baseline")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def summarise(per_run: list[dict[str, Any]], layers: list[int]) -> dict[str, Any]:
    """Per layer: means over runs of the headline numbers and of swap success per α."""
    out: dict[str, Any] = {}
    for layer in layers:
        entries = [r["layers"][str(layer)] for r in per_run]
        row: dict[str, Any] = {k: _mean([e[k] for e in entries]) for k in SUMMARY_KEYS}
        for name in ("stage1", "stage2", "stage2_free_only", "baseline"):
            row[f"ev_{name}"] = _mean([e[f"reconstruction_{name}"]["explained_variance"]
                                       for e in entries])
        if all("swap" in e for e in entries):
            row["swap"] = {method: {a: _mean([e["swap"][method][a] for e in entries])
                                    for a in entries[0]["swap"][method]}
                           for method in ("alignsae", "baseline")}
            row["swap_per_run"] = {method: {a: [e["swap"][method][a] for e in entries]
                                            for a in entries[0]["swap"][method]}
                                   for method in ("alignsae", "baseline")}
            row["n_cases"] = [e["swap"]["n_cases"] for e in entries]
        out[str(layer)] = row
    return out


def warnings_for(per_run: list[dict[str, Any]], layers: list[int]) -> list[str]:
    notes = ["AlignSAE's codes are dense (linear encoder, as in the paper) while the baseline "
             "is a sparse ReLU SAE: their L0 differ by design, so reconstruction is not "
             "compared at matched sparsity."]
    for run in per_run:
        for layer in layers:
            e = run["layers"][str(layer)]
            drop = (e["reconstruction_stage1"]["explained_variance"]
                    - e["reconstruction_stage2"]["explained_variance"])
            if drop > EV_TOLERANCE:
                notes.append(f"seed {run['seed']} layer {layer}: stage 2 lost {drop:.3f} of "
                             f"explained variance against stage 1 (> {EV_TOLERANCE})")
            if e["reconstruction_baseline"]["explained_variance"] < 0.5:
                notes.append(f"seed {run['seed']} layer {layer}: the baseline SAE explains only "
                             f"{e['reconstruction_baseline']['explained_variance']:.2f} of the "
                             "variance (a broken baseline would flatter AlignSAE)")
            n = e.get("swap", {}).get("n_cases")
            if n is not None and n < 100:
                notes.append(f"seed {run['seed']} layer {layer}: only {n} swap cases")
    return notes


# ---------------------------------------------------------------------------- report


def write_report(results: dict[str, Any], out: Path) -> Path:
    """results.json, report.md and (if swept) swap.png in ``out``; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    has_swap = all("swap" in row for row in results["summary"].values())
    if has_swap:
        _plot(results, out / "swap.png")
    atomic_write_bytes(out / "report.md", format_report(results, has_swap).encode())
    return out / "report.md"


def format_report(results: dict[str, Any], has_swap: bool) -> str:
    summary, n_runs = results["summary"], len(results["runs"])
    lines = ["# AlignSAE on the biography model", "",
             f"{n_runs} run(s) (seeds {[r['seed'] for r in results['runs']]}); every number is "
             "the mean over runs, measured on the held-out question phrasings.", "",
             "Columns: **slot acc** = share of questions whose largest relation slot is the "
             "asked relation; **value acc** = share whose value head (asked slot) predicts the "
             "answer's first token; **base slot acc** = the same read-out from the plain SAE's "
             "best-matching latents; **EV s1/s2/s2-free/base** = explained variance of stage 1, "
             "stage 2, stage 2 with the slots zeroed, and the plain SAE; **L0** = mean non-zero "
             "latents (AlignSAE / plain).", "",
             "| layer | slot acc | value acc | base slot acc | EV s1 | EV s2 | EV s2-free | "
             "EV base | L0 align / base |", "|---|---|---|---|---|---|---|---|---|"]
    for layer, row in summary.items():
        lines.append(f"| {layer} | {row['slot_accuracy']:.3f} | {row['value_accuracy']:.3f} | "
                     f"{row['baseline_slot_accuracy']:.3f} | {row['ev_stage1']:.3f} | "
                     f"{row['ev_stage2']:.3f} | {row['ev_stage2_free_only']:.3f} | "
                     f"{row['ev_baseline']:.3f} | {row['l0_alignsae']:.0f} / "
                     f"{row['l0_baseline']:.1f} |")
    if has_swap:
        alphas = list(next(iter(summary.values()))["swap"]["alignsae"])
        lines += ["", "## Concept swap", "",
                  "Swap success = share of cases (correctly answered held-out questions × "
                  "another relation with a different first answer token) whose top-1 answer "
                  "token becomes the target relation's value after setting the source latent "
                  "to 0 and the target latent to α (plain SAE: α × the latent's mean on-value), "
                  "spliced in as decode(z′) − decode(z) at the answer position. Cells: AlignSAE "
                  "/ plain SAE.", "",
                  "| layer | " + " | ".join(f"α={a}" for a in alphas) + " |",
                  "|---|" + "---|" * len(alphas)]
        for layer, row in summary.items():
            cells = [f"{row['swap']['alignsae'][a]:.3f} / {row['swap']['baseline'][a]:.3f}"
                     for a in alphas]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines += ["", "![swap success against α](swap.png)", "", "**Conclusion:** " +
                  conclusion(summary), ""]
    lines += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    return "\n".join(lines)


def conclusion(summary: dict[str, Any]) -> str:
    best_layer, best_alpha, best = None, None, -1.0
    for layer, row in summary.items():
        for a, v in row["swap"]["alignsae"].items():
            if v > best:
                best_layer, best_alpha, best = layer, a, v
    assert best_layer is not None and best_alpha is not None
    base = summary[best_layer]["swap"]["baseline"][best_alpha]
    base_best = max(v for row in summary.values() for v in row["swap"]["baseline"].values())
    ratio = best / base if base > 0 else math.inf
    return (f"AlignSAE's best swap success is {best:.1%} (layer {best_layer}, α={best_alpha}), "
            f"{ratio:.1f}× the plain SAE's {base:.1%} at the same setting (the plain SAE's best "
            f"anywhere: {base_best:.1%}).")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (layer, row) in enumerate(summary.items()):
        for method, style in (("alignsae", "-"), ("baseline", "--")):
            alphas = [float(a) for a in row["swap"][method]]
            runs = np.array(list(row["swap_per_run"][method].values()))  # (alphas, runs)
            ax.errorbar(alphas, runs.mean(1), yerr=runs.std(1), linestyle=style, marker="o",
                        capsize=2, color=colours[i % len(colours)],
                        label=f"layer {layer} {'AlignSAE' if method == 'alignsae' else 'plain'}")
    ax.set_xscale("symlog", linthresh=0.5)
    ax.set_xlabel("α (target latent value; plain SAE: × its mean on-value)")
    ax.set_ylabel("swap success")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"concept swap: mean ± sd over {len(results['runs'])} run(s)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
