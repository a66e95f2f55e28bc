"""``saelab alignsae``: AlignSAE on the biography model (train-lm, train, eval, swap)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from saelab.config import add_arguments, args_to_dict, from_dict

#: eval and swap write to different folders, so neither replaces the other's results
_REPORT_DIRS = {"eval": "eval_report", "swap": "report"}


def add_parser(sub: Any) -> None:
    from saelab.alignsae.evaluate import SwapConfig
    from saelab.alignsae.pipeline import AlignSAERunConfig
    from saelab.biography.lm import BioLMConfig

    p = sub.add_parser(
        "alignsae", help="AlignSAE: concept-aligned relation slots on a biography model",
        description="AlignSAE (Yang et al. 2025) on a small GPT-2 trained from scratch on "
        "synthetic biographies. train-lm trains the model; train trains stage 1 "
        "(reconstruction), stage 2 (the AlignSAE loss) and a plain SAE baseline per layer; eval "
        "reports slot accuracy, value-head accuracy and reconstruction; swap sweeps the concept "
        "swap over α and layers and writes report.md with the α-sweep plot.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    lm = verbs.add_parser("train-lm", help="train the biography GPT-2 from scratch")
    lm.add_argument("--out", required=True, help="model folder to write")
    add_arguments(lm, BioLMConfig)
    lm.set_defaults(run=_train_lm)

    tr = verbs.add_parser("train", help="collect activations, train stage 1, stage 2 and the "
                          "baseline for each layer (rerun to resume)")
    tr.add_argument("--out", required=True, help="run folder")
    add_arguments(tr, AlignSAERunConfig)
    tr.set_defaults(run=_train)

    for name, helptext, fn in (("eval", "slot accuracy, value accuracy, reconstruction", _eval),
                               ("swap", "concept-swap sweep over α and layers, with report",
                                _swap)):
        ev = verbs.add_parser(name, help=helptext)
        ev.add_argument("runs", nargs="+", help="run folder(s) of `alignsae train` (several "
                        "seeds are averaged)")
        ev.add_argument("--report", default=None, help="folder for results.json, report.md "
                        f"(and swap.png); default: the first run's folder/{_REPORT_DIRS[name]}")
        ev.add_argument("--no-progress", action="store_true", help="no progress lines")
        if name == "swap":
            add_arguments(ev, SwapConfig)
        ev.set_defaults(run=fn)


def _train_lm(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser
              ) -> int:
    from saelab.biography.lm import BioLMConfig, reproduce_command, train_bio_lm
    from saelab.io import refuse_sae_files

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    cfg = from_dict(BioLMConfig, args_to_dict(args, BioLMConfig))
    out = Path(args.out)
    refuse_sae_files(out / "model.safetensors")
    if (out / "model.safetensors").exists():
        raise FileExistsError(f"{out} already holds a model; choose another --out (a rerun "
                              "never overwrites a trained model)")
    meta = train_bio_lm(cfg, out, command=reproduce_command(cfg))
    print(json.dumps({"out": str(out), "train_seconds": meta["train_seconds"],
                      "answer_accuracy_held_out": meta["answer_accuracy"]["held_out"]}, indent=2))
    return 0


def _train(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    from saelab.alignsae.pipeline import AlignSAERunConfig, run_training

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    cfg = from_dict(AlignSAERunConfig, args_to_dict(args, AlignSAERunConfig))
    out = run_training(cfg, args.out)
    print(f"trained: {out} (next: saelab alignsae swap {out})", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace, swap: Any, verb: str) -> int:
    from saelab.alignsae.evaluate import evaluate_runs, format_report, write_report

    torch.set_num_threads(1)
    runs = [Path(r) for r in args.runs]
    report_dir = Path(args.report) if args.report else runs[0] / _REPORT_DIRS[verb]
    results = evaluate_runs(runs, swap, progress=not args.no_progress)
    path = write_report(results, report_dir)
    print(format_report(results, swap is not None))
    print(f"report: {path}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return _evaluate(args, None, "eval")


def _swap(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    from saelab.alignsae.evaluate import SwapConfig

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return _evaluate(args, from_dict(SwapConfig, args_to_dict(args, SwapConfig)), "swap")
