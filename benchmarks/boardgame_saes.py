"""Board-game benchmark (issue: board-game ground truth): SAE architectures on the Othello GPT.

Every architecture is trained on the residual stream of the shipped Othello model and of its
random-initialised control, at a comparable L0: the TopK family (topk, batchtopk, matryoshka,
ordered) at fixed k; the penalty-based ones (relu = standard, panneal, gated, jumprelu) over a
small coefficient sweep trained side by side on the same stream, keeping the run whose held-out
L0 is closest to k. Reported per SAE: L0, explained variance, held-out coverage and board
reconstruction for mine/theirs and legal moves, for both models, plus the linear probe.

Paper (Karvonen et al. 2024, Othello, best of each sweep, in-sample coverage of the with-blank
board, never-true cells counted as 0): TopK 0.77 ≈ Gated 0.76 > p-anneal 0.64 > standard 0.56 ≫
random-init 0.43. This script compares held-out scores at one L0, which is not how those numbers
were made; benchmarks/boardgame_paper.py runs the paper's comparison next to saelab's.

Usage: python benchmarks/boardgame_saes.py [--tokens 300000] [--k 16] [--out runs/bench_board]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from saelab.architectures.base import SAE
from saelab.boardgame import lm
from saelab.boardgame.activations import game_activations, write_npy
from saelab.evals import boardgame as board_eval
from saelab.pipelines.boardgame_demo import train_saes
from saelab.registry import config_from_dict

FIXED_K = ("topk", "batchtopk", "matryoshka", "ordered")
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "relu": (1.0, 2.0, 4.0),
    "panneal": (1.0, 2.0, 4.0),
    "gated": (2.0, 4.0, 8.0),
    "jumprelu": (3.0, 10.0, 30.0),
}
PAPER_BOARD = {"topk": 0.77, "gated": 0.76, "panneal": 0.64, "relu": 0.56, "random": 0.43}


def sae_settings(k: int, expansion: int, steps: int) -> dict[str, dict[str, Any]]:
    """Named SAE configs: fixed k for the TopK family, a coefficient sweep for the others."""
    base = {"expansion": expansion}
    out: dict[str, dict[str, Any]] = {
        "topk": {"architecture": "topk", "k": k, **base},
        "batchtopk": {"architecture": "batchtopk", "k": k, "threshold_start_step": steps // 2,
                      **base},
        "matryoshka": {"architecture": "matryoshka", "k": k, "group_fractions": [0.2, 0.3, 0.5],
                       "threshold_start_step": steps // 2, **base},
        "ordered": {"architecture": "ordered", "k": k, **base},
    }
    for arch, coefficients in COEFFICIENTS.items():
        key = "l0_coefficient" if arch == "jumprelu" else "l1_coefficient"
        for c in coefficients:
            out[f"{arch}@{c:g}"] = {"architecture": arch, key: c, **base}
    return out


@torch.no_grad()
def _l0(sae: SAE, acts_PD: torch.Tensor) -> float:
    return float((sae.encode(acts_PD) != 0).float().sum(1).mean())


def pick_closest_l0(saes: dict[str, SAE], acts_PD: torch.Tensor, k: int
                    ) -> tuple[dict[str, SAE], dict[str, float]]:
    """Keep one SAE per architecture: the sweep point whose L0 (on the evaluation's training
    positions) is closest to k. Also returns every sweep point's L0."""
    l0s = {name: _l0(sae, acts_PD) for name, sae in saes.items()}
    best: dict[str, tuple[float, str]] = {}
    for name, l0 in l0s.items():
        arch = name.split("@")[0]
        if arch not in best or abs(l0 - k) < best[arch][0]:
            best[arch] = (abs(l0 - k), name)
    return {name: saes[name] for _, name in best.values()}, l0s


def run_model(kind: str, random_init: bool, args: argparse.Namespace
              ) -> tuple[board_eval.BoardEvalResult, dict[str, Any]]:
    model, game = lm.load_game_lm("othello", random_init=random_init)
    layer = board_eval.default_layer(model) if args.layer < 0 else args.layer
    start = time.perf_counter()
    acts_path = write_npy(args.out / f"acts_{kind}.npy",
                          game_activations(model, game, layer, args.sae_games))
    settings = sae_settings(args.k, args.expansion, args.tokens // args.batch_size)
    configs = {name: config_from_dict(s) for name, s in settings.items()}
    saes = train_saes(acts_path, configs, args.out / f"saes_{kind}", args.tokens,
                      args.batch_size, args.lr, seed=0)
    train_seconds = time.perf_counter() - start
    eval_cfg = board_eval.BoardEvalConfig(game=game, layer=layer, random_init=random_init,
                                          train_games=args.eval_games,
                                          test_games=args.eval_games)
    data = board_eval.collect_board_data(eval_cfg)
    chosen, l0s = pick_closest_l0(saes, data.train.acts_PD, args.k)
    print(f"{kind}: sweep L0s " + ", ".join(f"{n} {v:.1f}" for n, v in l0s.items()),
          file=sys.stderr, flush=True)
    result = board_eval.run(chosen, eval_cfg, data)
    info = {"train_seconds": train_seconds, "total_seconds": time.perf_counter() - start,
            "sweep_l0": l0s}
    return result, info


COLUMNS = (("board", "coverage"), ("mine_theirs", "coverage"), ("legal_moves", "coverage"),
           ("board", "reconstruction"), ("mine_theirs", "reconstruction"),
           ("legal_moves", "reconstruction"))


def _sae_cells(sae: board_eval.SAEBoardResult) -> list[str]:
    out = []
    for prop, metric in COLUMNS:
        score = sae.scores[prop]
        value = score.coverage_test if metric == "coverage" else score.reconstruction_f1_test
        out.append(f"{value:.3f}")
    return out


def _probe_cells(probe: dict[str, board_eval.ProbeScores]) -> list[str]:
    return [f"{probe[p].mean_cell_f1 if m == 'coverage' else probe[p].micro_f1:.3f}"
            for p, m in COLUMNS]


def table(results: dict[str, board_eval.BoardEvalResult]) -> str:
    """Markdown table: held-out coverage and reconstruction per property, per model and SAE."""
    names = [f"{'cov' if m == 'coverage' else 'recon'} {p}" for p, m in COLUMNS]
    lines = ["| model | SAE | L0 | EV | " + " | ".join(names) + " |",
             "|---" * (4 + len(names)) + "|"]
    for kind, result in results.items():
        for s in sorted(result.saes, key=lambda s: -s.scores["board"].coverage_test):
            lines.append(f"| {kind} | {s.name} | {s.l0_test:.1f} | "
                         f"{s.explained_variance_test:.3f} | " + " | ".join(_sae_cells(s)) + " |")
        if result.probe:
            lines.append(f"| {kind} | linear probe | | | " + " | ".join(
                _probe_cells(result.probe)) + " |")
    return "\n".join(lines)


def ordering(results: dict[str, board_eval.BoardEvalResult], key: str = "coverage_test",
             prop: str = "board") -> str:
    """Our coverage of ``prop`` for the paper's architectures, in the paper's order, plus the
    best SAE on the random-init model."""
    trained = {s.name.split("@")[0]: getattr(s.scores[prop], key)
               for s in results["trained"].saes}
    random = max(getattr(s.scores[prop], key) for s in results["random-init"].saes)
    ours = [f"{a} {trained[a]:.2f}" for a in ("topk", "gated", "panneal", "relu") if a in trained]
    return f"{prop} {key}: " + ", ".join(ours) + f"; random-init (best SAE) {random:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_board"))
    parser.add_argument("--tokens", type=int, default=300_000, help="rows per SAE")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--k", type=int, default=16, help="target L0")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--sae-games", type=int, default=2000)
    parser.add_argument("--eval-games", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results, infos = {}, {}
    for kind, random_init in (("trained", False), ("random-init", True)):
        results[kind], infos[kind] = run_model(kind, random_init, args)
    text = table(results)
    print(text)
    print("\npaper (best of sweep, in-sample with-blank board coverage; compare with "
          "benchmarks/boardgame_paper.py):", json.dumps(PAPER_BOARD))
    for prop in ("board", "mine_theirs"):
        print("ours, held-out  ", ordering(results, "coverage_test", prop))
        print("ours, in-sample ", ordering(results, "coverage_train", prop))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "runs": infos,
         **{k: r.to_dict() for k, r in results.items()}}, indent=2))
    board_eval.plot_comparison(list(results.values()), args.out / "comparison.png",
                               labels=list(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
