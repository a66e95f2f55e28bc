"""L0 search: train TopK/BatchTopK SAEs over a grid of L0 values and seeds, measure the correct-L0
proxies, and choose the L0 by the elbow rule (see `choose_l0` and docs/l0_search.md).

Layout of the output folder:

- ``saes/l0_<k>_seed<s>/``: every trained SAE (cfg.json + sae.safetensors) with ``search.json``
  (the options it was trained with). A rerun reuses an SAE whose ``search.json`` matches.
- ``train/seed<s>_<hash>/``: the training run of the SAEs that were missing for seed s (all its
  L0 values on one pass over the data); an interrupted search resumes from its checkpoints.
- ``report.json``, ``report.md``, ``curve.png``: the curve (mean and 95% interval over seeds) and
  the choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.data.base import ActivationSource
from saelab.io import atomic_write_bytes, atomic_write_json, load, save
from saelab.metrics.core import core_metrics
from saelab.metrics.proxies import DEFAULT_PROXY_BATCH, proxy_metrics
from saelab.metrics.seeds import MeanCI, mean_ci
from saelab.registry import config_from_dict
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer

PROXIES = ("c_dec", "s_n_dec")
SEARCH_FILE = "search.json"


@dataclass
class L0SearchConfig:
    architecture: Literal["topk", "batchtopk"] = option("batchtopk", "SAE architecture swept")
    l0s: list[int] = option([], "L0 values (k) to train; at least 3, e.g. 4 8 16 32 64")
    seeds: int = option(3, "seeds per L0 (each seed: its own initialisation and data order)")
    d_sae: int = option(0, "latents per SAE (0 = d_in × expansion)")
    expansion: int = option(8, "latents per input dimension when d_sae is 0")
    proxy: Literal["c_dec", "s_n_dec"] = option(
        "c_dec", "proxy the choice is made on: c_dec (decoder pairwise cosine) or s_n_dec")
    proxy_n: int = option(0, "n of s_n^dec (0 = half the latents)")
    elbow_tolerance: float = option(
        0.1, "choose the lowest L0 whose mean proxy is within this share of the curve's range "
             "above its minimum")
    eval_rows: int = option(16384, "held-out rows for the proxies, L0 and MSE")
    proxy_batch_size: int = option(DEFAULT_PROXY_BATCH, "rows per batch of s_n^dec")
    sae_options: dict[str, Any] = option({}, "further architecture options for every SAE")

    def validate(self) -> None:
        if len(set(self.l0s)) < 3 or any(k < 1 for k in self.l0s):
            raise ConfigError(f"l0s needs at least 3 distinct values >= 1, got {self.l0s}; an "
                              "elbow needs a curve (e.g. --l0s 4 8 16 32 64)")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        if not 0 <= self.elbow_tolerance < 1:
            raise ConfigError(f"elbow_tolerance must be in [0, 1), got {self.elbow_tolerance}")
        reserved = {"architecture", "k", "d_sae", "expansion"} & set(self.sae_options)
        if reserved:
            raise ConfigError(f"sae_options may not set {sorted(reserved)}; the search sets them")

    def sae_options_for(self, k: int) -> dict[str, Any]:
        opts: dict[str, Any] = {**self.sae_options, "architecture": self.architecture, "k": k}
        opts["d_sae" if self.d_sae else "expansion"] = self.d_sae or self.expansion
        return opts


@dataclass
class L0Point:
    """One L0 value of the curve: metrics per seed and their mean ± 95% interval."""

    k: int
    per_seed: list[dict[str, float]]
    summary: dict[str, MeanCI] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "per_seed": self.per_seed,
                "summary": {m: ci.to_dict() for m, ci in self.summary.items()}}


@dataclass
class L0SearchResult:
    points: list[L0Point]
    chosen_l0: int
    proxy: str
    rule: str
    warnings: list[str]
    out_dir: Path
    trained: list[str]
    reused: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"chosen_l0": self.chosen_l0, "proxy": self.proxy, "rule": self.rule,
                "warnings": self.warnings, "trained": self.trained, "reused": self.reused,
                "curve": [p.to_dict() for p in self.points]}


def sae_name(k: int, seed: int) -> str:
    return f"l0_{k}_seed{seed}"


def choose_l0(ks: list[int], proxy_means: list[float], tolerance: float) -> tuple[int, list[str]]:
    """The elbow rule: the lowest L0 whose mean proxy ≤ min + tolerance·(max − min).

    The proxies rise steeply below the true L0 and slowly above it, so the lowest L0 that is
    already close to the minimum sits just before the rise. Returns (L0, warnings); it warns
    when the choice is at an end of the grid (the elbow may lie outside the sweep).
    """
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    ks_sorted = [ks[i] for i in order]
    means = [proxy_means[i] for i in order]
    if any(math.isnan(m) for m in means):
        raise ValueError("a proxy value is NaN; check the SAEs (dead or broken) before choosing")
    low, high = min(means), max(means)
    limit = low + tolerance * (high - low)
    chosen_index = next(i for i, m in enumerate(means) if m <= limit)
    warnings = []
    if chosen_index == 0:
        warnings.append(f"the chosen L0 {ks_sorted[0]} is the lowest in the sweep: the proxy "
                        "never rose at low L0, so the elbow may be lower; extend --l0s downwards")
    argmin = means.index(low)
    if argmin == len(means) - 1:
        warnings.append(f"the proxy is still falling at the highest L0 {ks_sorted[-1]}: extend "
                        "--l0s upwards; the true L0 may be higher")
    return ks_sorted[chosen_index], warnings


def run_l0_search(
    source_for_seed: Callable[[int], ActivationSource],
    cfg: L0SearchConfig,
    train: TrainConfig,
    out_dir: str | Path,
    eval_acts: torch.Tensor,
    progress: bool = True,
) -> L0SearchResult:
    """Train what is missing, evaluate every SAE on `eval_acts`, choose the L0, write the report.

    `source_for_seed(s)` gives seed s's activation stream (its own data order); SAEs of one seed
    share one pass over it. The trainer's own seed is `train.seed + s`.
    """
    cfg.validate()
    out = Path(out_dir)
    ks = sorted(set(cfg.l0s))
    trained, reused = [], []
    saes: dict[str, SAE] = {}
    for seed in range(cfg.seeds):
        seed_train = dataclasses.replace(train, seed=train.seed + seed)
        wanted = {sae_name(k, seed): cfg.sae_options_for(k) for k in ks}
        record = {n: {"sae": o, "train": to_dict(seed_train)} for n, o in wanted.items()}
        missing = {}
        for name, opts in wanted.items():
            folder = out / "saes" / name
            if _matches(folder, record[name]):
                saes[name] = load(folder)
                reused.append(name)
            else:
                missing[name] = opts
        if not missing:
            continue
        if progress:
            print(f"l0-search: seed {seed}: training {len(missing)} SAE(s) "
                  f"(L0 {', '.join(n.split('_')[1] for n in missing)}) on one pass; reused "
                  f"{len(wanted) - len(missing)}", file=sys.stderr)
        digest = hashlib.sha256(json.dumps({n: record[n] for n in missing},
                                           sort_keys=True).encode()).hexdigest()[:10]
        trainer = Trainer({n: config_from_dict(dict(o), where=n) for n, o in missing.items()},
                          seed_train, source_for_seed(seed), out / "train" / f"seed{seed}_{digest}")
        for name, sae in trainer.fit().items():
            folder = save(sae, out / "saes" / name)
            atomic_write_json(folder / SEARCH_FILE, record[name])
            saes[name] = sae
            trained.append(name)
    points = [_evaluate_point(k, [saes[sae_name(k, s)] for s in range(cfg.seeds)], eval_acts, cfg)
              for k in ks]
    chosen, warnings = choose_l0(ks, [p.summary[cfg.proxy].mean for p in points],
                                 cfg.elbow_tolerance)
    warnings += _dead_warnings(points)
    rule = (f"lowest L0 whose mean {cfg.proxy} over {cfg.seeds} seed(s) is within "
            f"{cfg.elbow_tolerance:.0%} of the curve's range above its minimum")
    result = L0SearchResult(points, chosen, cfg.proxy, rule, warnings, out, trained, reused)
    write_report(result, cfg)
    return result


@torch.no_grad()
def evaluate_sae(sae: SAE, acts: torch.Tensor, n: int | None, batch_size: int) -> dict[str, float]:
    """L0, MSE, EV, dead share and both proxies of one SAE on held-out rows."""
    sae.eval()
    codes = sae.encode(acts)
    core = core_metrics(acts, sae.decode(codes), codes)
    proxies = proxy_metrics(acts, sae.W_dec, sae.b_dec, n or None, batch_size)
    return {"l0": core.l0, "mse": core.mse, "explained_variance": core.explained_variance,
            "dead_share": core.dead_share, "c_dec": proxies.decoder_pairwise_cosine,
            "s_n_dec": proxies.nth_decoder_projection}


def _evaluate_point(k: int, saes: list[SAE], acts: torch.Tensor, cfg: L0SearchConfig) -> L0Point:
    rows = [evaluate_sae(s, acts, cfg.proxy_n, cfg.proxy_batch_size) for s in saes]
    return L0Point(k, rows, {m: mean_ci([r[m] for r in rows]) for m in rows[0]})


def _dead_warnings(points: list[L0Point]) -> list[str]:
    return [f"L0 {p.k}: {p.summary['dead_share'].mean:.0%} of latents dead on the eval rows; "
            "its proxies compare unfairly (train longer or revive dead latents)"
            for p in points if p.summary["dead_share"].mean > 0.1]


def _matches(folder: Path, record: dict[str, Any]) -> bool:
    path = folder / SEARCH_FILE
    if not path.exists() or not (folder / "sae.safetensors").exists():
        return False
    try:
        return bool(json.loads(path.read_text()) == json.loads(json.dumps(record)))
    except json.JSONDecodeError:
        return False


# ---------------------------------------------------------------------------- report

COLUMNS = {
    "k": "the L0 (k) the SAEs were trained at",
    "l0": "measured L0 on the held-out rows (BatchTopK at inference uses its learned threshold)",
    "c_dec": "decoder pairwise cosine, mean |cos| over latent pairs (lower = less mixing)",
    "s_n_dec": "nth decoder projection (lower = less mixing)",
    "mse": "reconstruction error per element",
    "explained_variance": "1 − FVU",
}


def write_report(result: L0SearchResult, cfg: L0SearchConfig) -> None:
    out = result.out_dir
    atomic_write_json(out / "report.json", {**result.to_dict(), "config": to_dict(cfg),
                                            "columns": COLUMNS})
    lines = [f"# L0 search ({cfg.architecture}, {cfg.seeds} seed(s) per L0)", "",
             f"**Chosen L0: {result.chosen_l0}** (rule: {result.rule}).", "",
             "Each cell: mean ± half-width of the 95% t-interval over seeds.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for p in result.points:
        cells = [str(p.k)] + [str(p.summary[c]) for c in list(COLUMNS)[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Columns:"] + [f"- `{c}`: {d}" for c, d in COLUMNS.items()]
    lines += ["", "Warnings:" if result.warnings else "No warnings."]
    lines += [f"- {w}" for w in result.warnings]
    lines += ["", "SAEs differ only in L0 and seed; compare proxies only between SAEs of one "
              "sweep (same data, width and training length)."]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
    _plot(result, out / "curve.png")


def _plot(result: L0SearchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [p.k for p in result.points]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, PROXIES, strict=True):
        means = [p.summary[metric].mean for p in result.points]
        half = [0.0 if math.isnan(p.summary[metric].half_width) else p.summary[metric].half_width
                for p in result.points]
        ax.errorbar(ks, means, yerr=half, marker="o", capsize=3)
        ax.axvline(result.chosen_l0, color="#c44", linestyle="--", label=f"chosen L0 {result.chosen_l0}")
        ax.set_xscale("log")
        ax.set_xlabel("L0 (k)")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle("correct-L0 proxies: mean and 95% interval over seeds")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
