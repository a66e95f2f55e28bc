"""The Othello demo: SAEs on the shipped Othello GPT, scored against the true board.

:func:`run_othello_demo` collects residual-stream activations over generated games (written to
``.npy``), trains SAEs with saelab's Trainer on the trained model and on its random-initialised
control, measures coverage and board reconstruction on held-out games next to a linear-probe
baseline, writes ``report.md`` / ``report.html`` with a plot, and builds the feature store of
the trained model's TopK SAE (browse it with ``saelab explore``).
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelab.architectures.base import SAE, SAEConfig
from saelab.boardgame import lm
from saelab.boardgame.activations import cache_game_activations
from saelab.config import option, to_dict
from saelab.data.open import DataConfig, open_source
from saelab.evals import board_report
from saelab.evals import boardgame as board_eval
from saelab.io import atomic_write_bytes, atomic_write_json
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer
from saelab.training.logging import StageProgress

MODEL_KINDS = (("trained", False), ("random-init", True))


@dataclass
class OthelloDemoConfig:
    """Settings of the Othello demo (defaults fit in a few minutes on 2 cores)."""

    model: str = option("othello", "game LM: 'othello' (shipped) or a folder")
    layer: int = option(-1, "residual stream after this block; -1 = the model's default")
    sae_games: int = option(2000, "games whose activations train the SAEs (59 rows each)")
    eval_games: int = option(300, "games in each of the evaluation train and test splits")
    total_tokens: int = option(400_000, "activation rows each SAE trains on")
    batch_size: int = option(512, "rows per SAE optimiser step")
    lr: float = option(2e-3, "SAE learning rate")
    expansion: int = option(8, "latents per residual dimension")
    k: int = option(16, "active latents of the TopK SAE")
    panneal_coefficient: float = option(2.0, "initial sparsity coefficient of the p-anneal SAE")
    seed: int = option(0, "seed of SAE initialisation and data order")
    features: bool = option(True, "build the feature store of the trained model's TopK SAE")
    feature_board_games: int = option(200, "games in each split of the feature store's "
                                      "board-label evaluation")
    threads: int = option(1, "torch threads (these SAE matmuls gain little from more, and on a "
                          "busy machine extra OpenMP threads spin)")


def demo_sae_configs(cfg: OthelloDemoConfig) -> dict[str, SAEConfig]:
    """A TopK SAE and a p-annealing SAE of the same width."""
    return {
        "topk": config_from_dict({"architecture": "topk", "k": cfg.k,
                                  "expansion": cfg.expansion}),
        "panneal": config_from_dict({"architecture": "panneal", "expansion": cfg.expansion,
                                     "l1_coefficient": cfg.panneal_coefficient}),
    }


def train_saes(acts_path: Path, sae_configs: dict[str, SAEConfig], out_dir: Path,
               total_tokens: int, batch_size: int, lr: float, seed: int = 0,
               progress: bool = False) -> dict[str, SAE]:
    """Train all SAEs side by side on one stream of the activations (one Trainer); ``acts_path``
    is an activation cache folder or an array file."""
    train = TrainConfig(total_tokens=total_tokens, batch_size=batch_size, lr=lr, seed=seed,
                        lr_warmup_steps=20, checkpoint_every=0, log_every=20, progress=progress,
                        measure_peak=False, init_samples=8192)
    source = open_source(DataConfig(path=str(acts_path)), seed)
    return Trainer(sae_configs, train, source, out_dir).fit()


def _model_run(cfg: OthelloDemoConfig, kind: str, random_init: bool, out: Path,
               verbose: bool = True) -> board_eval.BoardEvalResult:
    say = StageProgress(f"demo {kind}", verbose).say
    model, game = lm.load_game_lm(cfg.model, random_init=random_init)
    layer = board_eval.default_layer(model) if cfg.layer < 0 else cfg.layer
    start = time.perf_counter()
    say(f"caching the residual stream after block {layer} over {cfg.sae_games} games")
    acts_path = cache_game_activations(model, game, layer, cfg.sae_games,
                                       out / f"cache_{kind}_layer{layer}")
    took = time.perf_counter() - start
    say(f"cached {cfg.sae_games} games in {took:.1f} s ({cfg.sae_games / max(took, 1e-9):.0f} "
        f"games/s); training {len(demo_sae_configs(cfg))} SAEs side by side on "
        f"{cfg.total_tokens:,} rows each")
    saes = train_saes(acts_path, demo_sae_configs(cfg), out / f"saes_{kind}", cfg.total_tokens,
                      cfg.batch_size, cfg.lr, cfg.seed, progress=verbose)
    eval_cfg = board_eval.BoardEvalConfig(game=game, model=cfg.model, layer=layer,
                                          random_init=random_init, train_games=cfg.eval_games,
                                          test_games=cfg.eval_games, seed=cfg.seed,
                                          progress=verbose)
    return board_eval.run(saes, eval_cfg)


def demo_tokens(cfg: OthelloDemoConfig) -> dict[str, int | None]:
    """Rows each demo SAE trains on (whole batches, as the Trainer counts them)."""
    rows = cfg.total_tokens // cfg.batch_size * cfg.batch_size
    return {name: rows for name in demo_sae_configs(cfg)}


def demo_sae_dir(out_dir: str | Path, kind: str = "trained", name: str = "topk") -> Path:
    """Where the demo saves the final SAE ``name`` of one model kind."""
    return Path(out_dir) / f"saes_{kind}" / "final" / name


def build_demo_store(out_dir: str | Path, cfg: OthelloDemoConfig, layer: int,
                     progress: bool = True) -> Path:
    """The feature store of the trained model's TopK SAE, from the demo's activation cache."""
    from saelab.boardgame.lm import pretrained_path, read_metadata
    from saelab.features import CacheRows, FeatureBuildConfig, ModelSpec, build_store, load_model
    from saelab.io import load

    out = Path(out_dir)
    sae_dir = demo_sae_dir(out)
    game = str(read_metadata(pretrained_path(cfg.model) if cfg.model in lm.GAMES
                             else Path(cfg.model))["game"])
    spec = ModelSpec("game", cfg.model, f"transformer.h.{layer}", game)
    stream = CacheRows(out / f"cache_trained_layer{layer}")
    result = build_store(load(sae_dir), stream, sae_dir / "features",
                         FeatureBuildConfig(board_games=cfg.feature_board_games, seed=cfg.seed),
                         spec=spec, tokens=stream.tokens, loaded=load_model(spec),
                         sae_path=str(sae_dir), source=str(stream.source.path), rebuild=True,
                         progress=progress)
    return result.path.parent


def run_othello_demo(out_dir: str | Path, cfg: OthelloDemoConfig | None = None,
                     verbose: bool = True) -> dict[str, board_eval.BoardEvalResult]:
    """Run the demo into ``out_dir``; returns the results per model kind and writes
    ``results.json``, ``comparison.png``, ``report.md`` and ``report.html``."""
    cfg = cfg or OthelloDemoConfig()
    out = Path(out_dir)
    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        results = {}
        for kind, random_init in MODEL_KINDS:
            results[kind] = _model_run(cfg, kind, random_init, out, verbose)
    finally:
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - start
    tokens = demo_tokens(cfg)
    if verbose:
        print(board_report.format_report(results, tokens), flush=True)
    atomic_write_json(out / "results.json", {"config": to_dict(cfg), "seconds": round(seconds, 1),
                                             **{k: r.to_dict() for k, r in results.items()},
                                             "report": board_report.report_dict(results, tokens)})
    plot = board_eval.plot_comparison(list(results.values()), out / "comparison.png",
                                      labels=list(results))
    write_report(out, results, plot, seconds, tokens)
    if cfg.features:
        old_threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            build_demo_store(out, cfg, results["trained"].layer, progress=verbose)
        finally:
            torch.set_num_threads(old_threads)
    return results


# ---------------------------------------------------------------------------- report


def _notes(results: dict[str, board_eval.BoardEvalResult], seconds: float) -> list[str]:
    first = next(iter(results.values()))
    return [
        f"Othello GPT ({first.model}), residual stream after block {first.layer}; "
        f"{first.n_train_positions} positions choose thresholds, latents and feature labels, "
        f"{first.n_test_positions} positions from other games are scored (F1 on held-out games).",
        "The random-init rows repeat everything on the same network with random weights: what "
        "an SAE finds there comes from the input tokens alone, not from a learned world model.",
        f"Finished in {seconds:.0f} s. Definitions: docs/boardgame.md and docs/metrics.md.",
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in rows)
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + cells + "</table>")


def write_report(out: Path, results: dict[str, board_eval.BoardEvalResult], plot: Path,
                 seconds: float, tokens: dict[str, int | None] | None = None) -> Path:
    """``report.md`` and ``report.html`` (plot embedded): conclusion, warnings, the SAEs, the
    scores and what every column means; returns the HTML path."""
    notes = _notes(results, seconds)
    props = board_report.report_props(results, limit=10)
    sae_header = list(board_report.SAE_COLUMNS)
    sae_rows = [i.cells() for i in board_report.sae_infos(results, tokens)]
    score_header = ["model", "SAE"] + [f"{m} {p}" for p in props for m in ("cov", "cov*", "rec")]
    score_rows = board_report.score_rows(results, props)
    columns = {**board_report.SAE_COLUMNS, **board_report.score_columns(props)}
    warnings = board_report.comparison_warnings(results) or ["none"]
    conclusion = board_report.conclusion(results)
    md = ["# saelab demo: SAEs on an Othello GPT vs the true board", "",
          f"**Conclusion.** {conclusion}", "", *[f"{n}\n" for n in notes],
          "## Warnings", "", *[f"- {w}" for w in warnings], "",
          "## SAEs", "", *_md_table(sae_header, sae_rows), "",
          "## Scores", "", *_md_table(score_header, score_rows), "",
          "## Columns", "", *[f"- **{k}**: {v}" for k, v in columns.items()], "",
          f"![comparison]({plot.name})", ""]
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    image = base64.b64encode(plot.read_bytes()).decode()
    page = (
        "<!doctype html><meta charset='utf-8'><title>saelab Othello demo</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}</style>"
        "<h1>SAEs on an Othello GPT vs the true board</h1>"
        f"<p><b>Conclusion.</b> {html.escape(conclusion)}</p>"
        + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
        + "<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        + "</ul><h2>SAEs</h2>" + _html_table(sae_header, sae_rows)
        + "<h2>Scores</h2>" + _html_table(score_header, score_rows)
        + "<h2>Columns</h2><dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                           for k, v in columns.items()) + "</dl>"
        + f"<img alt='comparison' src='data:image/png;base64,{image}' style='max-width:100%'>"
    )
    path = out / "report.html"
    atomic_write_bytes(path, page.encode())
    return path


def demo_summary(results: dict[str, board_eval.BoardEvalResult]) -> dict[str, Any]:
    """Headline numbers per (model kind, SAE): held-out coverage and reconstruction."""
    return {kind: {s.name: {p: {"coverage": v.coverage_test,
                                "reconstruction": v.reconstruction_f1_test}
                            for p, v in s.scores.items()}
                   for s in r.saes}
            for kind, r in results.items()}
