"""``saelab boardgame``: game language models and the board-game ground-truth evaluation.

Actions: ``train-lm`` (train an Othello or chess GPT), ``lm-eval`` (legal-move accuracy),
``activations`` (residual stream over generated games → .npy for ``saelab train``), ``eval``
(coverage and board reconstruction of SAEs, JSON + plot) and ``demo`` (the Othello demo).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saelab.config import ConfigError, add_arguments, args_to_dict, from_dict

Action = Callable[[argparse.Namespace], int]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("boardgame", allow_abbrev=False,
                       help="board-game ground truth: game LMs, coverage and reconstruction",
                       description="Othello and chess language models with known board states: "
                       "train them, collect activations, and score SAEs by how well their "
                       "latents track the board (coverage, board reconstruction; "
                       "docs/boardgame.md).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_train_lm(actions)
    _add_lm_eval(actions)
    _add_activations(actions)
    _add_eval(actions)
    _add_demo(actions)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    action: Action = args.boardgame_action
    return action(args)


# ---------------------------------------------------------------------------- train-lm


def _add_train_lm(actions: Any) -> None:
    from saelab.boardgame.lm import LMTrainConfig

    p = actions.add_parser("train-lm", allow_abbrev=False, help="train a game GPT",
                           description="Train a GPT-2 on seeded random Othello games or "
                           "weak-engine chess games, report legal-move accuracy on held-out "
                           "games and save config.json, model.safetensors and training.json. "
                           "Checkpoints go to OUT/checkpoint/ every --checkpoint-minutes and "
                           "when stopped (Ctrl-C, SIGTERM); --resume OUT continues from there.")
    p.add_argument("--out", help="output folder (required unless --resume)")
    p.add_argument("--resume", metavar="OUT",
                   help="continue the run checkpointed in OUT (its settings are kept; "
                   "--device, --threads, --checkpoint-minutes and the eval sizes may change, and "
                   "--train-games of a one-epoch run may change, re-stretching the "
                   "learning-rate schedule)")
    add_arguments(p.add_argument_group("training options"), LMTrainConfig)
    p.add_argument("--stop-at-step", type=int, default=None, metavar="STEP",
                   help="checkpoint and stop after this step (resume later with --resume)")
    p.set_defaults(boardgame_action=_train_lm)


def _train_lm(args: argparse.Namespace) -> int:
    from saelab.boardgame.lm import LMTrainConfig
    from saelab.training.game_lm import TrainingStopped, resume_config, train_lm

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise ConfigError("--resume OUT continues in OUT itself; drop --out")
    if not (args.resume or args.out):
        raise ConfigError("train-lm needs --out FOLDER (or --resume FOLDER to continue a run)")
    out = args.resume or args.out
    given = args_to_dict(args, LMTrainConfig)
    cfg = resume_config(out, given) if args.resume else from_dict(LMTrainConfig, given)
    try:
        meta = train_lm(cfg, out, resume=bool(args.resume), stop_at_step=args.stop_at_step)
    except TrainingStopped as stopped:
        print(f"{stopped}\ncontinue with: saelab boardgame train-lm --resume {out}",
              file=sys.stderr)
        return 130
    print(json.dumps({"legal_move_accuracy": meta["legal_move_accuracy"],
                      "train_seconds": meta["train_seconds"], "steps": meta["steps"],
                      "out": out}, indent=2))
    return 0


# ---------------------------------------------------------------------------- lm-eval


def _add_lm_eval(actions: Any) -> None:
    p = actions.add_parser("lm-eval", allow_abbrev=False, help="legal-move accuracy of a game LM",
                           description="Legal-move accuracy of a game LM on seeded held-out "
                           "games (definitions in docs/boardgame.md).")
    p.add_argument("model", nargs="?", default="othello",
                   help="'othello' or 'chess' (the shipped models) or a model folder")
    p.add_argument("--games", type=int, default=500, help="held-out games")
    p.add_argument("--greedy-games", type=int, default=30,
                   help="chess: games whose moves are greedy-decoded")
    p.add_argument("--random-init", action="store_true", help="score the random-init control")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out games")
    p.add_argument("--no-probe", action="store_true",
                   help="othello: skip the linear board probe (empty/mine/theirs per square)")
    p.add_argument("--probe-games", type=int, default=500,
                   help="othello: games the board probe is fit on (and as many it is scored on)")
    p.add_argument("--layer", type=int, default=-1,
                   help="othello: block the probe reads; -1 = the model's default (hooked) layer")
    p.add_argument("--probe-steps", type=int, default=400,
                   help="othello: Adam steps (of 1024 positions) fitting the board probe")
    p.set_defaults(boardgame_action=_lm_eval)


def _lm_eval(args: argparse.Namespace) -> int:
    from saelab.boardgame.lm import (
        held_out_seed,
        legal_move_accuracy,
        load_game_lm,
        model_config,
    )
    from saelab.training.logging import StageProgress

    model, game = load_game_lm(args.model, random_init=args.random_init)
    print(f"lm-eval: legal moves on {args.games} held-out {game} games ...", file=sys.stderr,
          flush=True)
    start = time.time()
    stage = StageProgress("lm-eval")
    scores: dict[str, Any] = legal_move_accuracy(
        model, game, args.games, held_out_seed(args.seed), greedy_games=args.greedy_games,
        max_chars=int(model_config(model).n_positions),
        progress=lambda metric: stage.counter(metric, "games", interval=10))
    print(f"lm-eval: done in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    if game == "othello" and not args.no_probe:
        from saelab.pipelines.board_probe import othello_board_probe

        print(f"lm-eval: board probe: fit on {args.probe_games} games, scored on "
              f"{args.probe_games} held-out games ...", file=sys.stderr, flush=True)
        start = time.time()
        probe = othello_board_probe(model, args.layer, args.probe_games, args.probe_games,
                                    args.seed, args.probe_steps)
        print(f"lm-eval: probe done in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        scores["board_probe"] = dataclasses.asdict(probe)
    print(json.dumps({"model": args.model, "game": game, "random_init": args.random_init,
                      "games": args.games, **scores}, indent=2))
    return 0


# ---------------------------------------------------------------------------- activations


def _add_activations(actions: Any) -> None:
    p = actions.add_parser("activations", allow_abbrev=False,
                           help="residual-stream activations over generated games (.npy)",
                           description="Run a game LM over seeded generated games and write "
                           "the residual stream after one block as a (rows × d_model) .npy "
                           "file, ready for `saelab train --data`.")
    p.add_argument("model", nargs="?", default="othello", help="'othello', 'chess' or a folder")
    p.add_argument("--layer", type=int, default=-1, help="block index; -1 = the model's default")
    p.add_argument("--games", type=int, default=2000, help="number of games")
    p.add_argument("--seed", type=int, default=None, help="games seed (default: the SAE seed)")
    p.add_argument("--positions", choices=["all", "scored"], default="all",
                   help="chess: every character or only the scored '.' characters")
    p.add_argument("--random-init", action="store_true", help="use the random-init control")
    p.add_argument("--out", required=True, help="output .npy file")
    p.set_defaults(boardgame_action=_activations)


def _activations(args: argparse.Namespace) -> int:
    from saelab.boardgame.activations import SAE_GAMES_SEED, game_activations, write_npy
    from saelab.boardgame.lm import load_game_lm
    from saelab.evals.boardgame import default_layer

    model, game = load_game_lm(args.model, random_init=args.random_init)
    layer = default_layer(model) if args.layer < 0 else args.layer
    seed = SAE_GAMES_SEED if args.seed is None else args.seed
    acts = game_activations(model, game, layer, args.games, seed, args.positions)
    write_npy(args.out, acts)
    print(json.dumps({"out": args.out, "rows": acts.shape[0], "width": acts.shape[1],
                      "game": game, "layer": layer, "hook": f"transformer.h.{layer}"}))
    return 0


# ---------------------------------------------------------------------------- eval


def _add_eval(actions: Any) -> None:
    from saelab.evals.boardgame import BoardEvalConfig

    p = actions.add_parser("eval", allow_abbrev=False,
                           help="coverage and board reconstruction of SAEs",
                           description="Score SAEs trained on a game LM's residual stream: "
                           "coverage and board reconstruction per board-state property, chosen "
                           "on training games and reported on held-out games, with a linear "
                           "probe baseline. Writes JSON and a comparison plot.")
    p.add_argument("saes", nargs="*", help="SAE folders (cfg.json + sae.safetensors)")
    p.add_argument("--sae", action="append", default=[], help="another SAE folder (repeatable)")
    p.add_argument("--sae-dir", help="a folder whose subfolders are SAEs (e.g. a run's final/)")
    p.add_argument("--out", default="boardgame_eval.json", help="results JSON")
    p.add_argument("--no-plot", action="store_true", help="skip the comparison plot")
    add_arguments(p.add_argument_group("evaluation options"), BoardEvalConfig)
    p.set_defaults(boardgame_action=_eval)


def sae_folders(args: argparse.Namespace) -> dict[str, Path]:
    """Named SAE folders from the positional, ``--sae`` and ``--sae-dir`` arguments."""
    paths = [Path(p) for p in [*args.saes, *args.sae]]
    if args.sae_dir:
        root = Path(args.sae_dir)
        if not root.is_dir():
            raise ConfigError(f"--sae-dir {root} is not a folder")
        paths += sorted(d for d in root.iterdir() if (d / "cfg.json").exists())
    if not paths:
        raise ConfigError("no SAE given: pass SAE folders, --sae PATH or --sae-dir FOLDER")
    named: dict[str, Path] = {}
    for path in paths:
        name = path.name if path.name not in named else str(path)
        named[name] = path
    return named


def _eval(args: argparse.Namespace) -> int:
    from saelab.evals import board_report
    from saelab.evals import boardgame as board_eval
    from saelab.io import atomic_write_json, load

    cfg = from_dict(board_eval.BoardEvalConfig, args_to_dict(args, board_eval.BoardEvalConfig))
    folders = sae_folders(args)
    saes = {name: load(path) for name, path in folders.items()}
    result = board_eval.run(saes, cfg)
    out = Path(args.out)
    kind = board_report.CONTROL if cfg.random_init else board_report.TRAINED
    tokens = {name: board_report.trained_tokens(path) for name, path in folders.items()}
    atomic_write_json(out, {**result.to_dict(),
                            "report": board_report.report_dict({kind: result}, tokens)})
    print(board_report.format_report({kind: result}, tokens))
    if not args.no_plot:
        print(f"plot: {board_eval.plot_comparison([result], out.with_suffix('.png'))}")
    print(f"results: {out}")
    return 0


# ---------------------------------------------------------------------------- demo


def _add_demo(actions: Any) -> None:
    from saelab.pipelines.boardgame_demo import OthelloDemoConfig

    p = actions.add_parser("demo", allow_abbrev=False, help="the Othello SAE demo (minutes)",
                           description="Train a TopK and a p-anneal SAE on the shipped Othello "
                           "GPT and on its random-init control, score both against the true "
                           "board and write report.html / report.md.")
    p.add_argument("--out", default="runs/boardgame_demo", help="output folder")
    add_arguments(p.add_argument_group("demo options"), OthelloDemoConfig)
    p.set_defaults(boardgame_action=_demo)


def _demo(args: argparse.Namespace) -> int:
    from saelab.pipelines.boardgame_demo import OthelloDemoConfig, run_othello_demo

    cfg = from_dict(OthelloDemoConfig, args_to_dict(args, OthelloDemoConfig))
    run_othello_demo(args.out, cfg)
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
