"""``saelab l0-search``: sweep the L0 of TopK/BatchTopK SAEs over seeds and pick it by the
correct-L0 proxies (c_dec, s_n^dec) of "Sparse but Wrong"."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from saelab.config import add_arguments, args_to_dict, from_dict
from saelab.data.open import open_source
from saelab.data.toy import ToySource
from saelab.ops import tune_cpu_allocator
from saelab.run_config import DataConfig
from saelab.search.l0 import L0SearchConfig, run_l0_search
from saelab.toy.generator import ToyModel
from saelab.toy.recovery import PRESETS
from saelab.training.config import TrainConfig

EPILOG = """examples:
  saelab l0-search --data acts.npy --l0s 8 16 32 64 128 --seeds 3 --total-tokens 2000000 --out runs/l0
  saelab l0-search --toy chanin_large --l0s 4 8 11 16 24 --d-sae 50 --total-tokens 4000000 --batch-size 1024
Rerunning the same command reuses the SAEs already trained and resumes unfinished training.
Writes report.md, report.json and curve.png to --out."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("l0-search", help="find the right L0 from the correct-L0 proxies",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="activations: .npy/.safetensors file or a `saelab cache` folder")
    data.add_argument("--toy", choices=sorted(PRESETS), help="train on a toy preset instead")
    p.add_argument("--out", default="runs/l0_search", help="output folder (default: runs/l0_search)")
    add_arguments(p.add_argument_group("search options"), L0SearchConfig)
    add_arguments(p.add_argument_group("training options"), TrainConfig, prefix="train_",
                  flag_prefix="", skip=("seed",))
    p.add_argument("--seed", type=int, default=0, help="base seed (seed s trains with seed + s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    cfg = from_dict(L0SearchConfig, args_to_dict(args, L0SearchConfig))
    train = from_dict(TrainConfig, {**args_to_dict(args, TrainConfig, prefix="train_"),
                                    "seed": args.seed})
    cfg.validate()
    tune_cpu_allocator()
    if args.toy:
        toy = ToyModel(PRESETS[args.toy]())

        def source_for_seed(seed: int) -> Any:
            return ToySource(toy, seed=args.seed + seed)

        eval_acts, _ = toy.sample(cfg.eval_rows, torch.Generator().manual_seed(10**6 + args.seed))
        print(f"toy preset {args.toy}: true L0 {toy.true_l0:.2f}", file=sys.stderr)
    else:
        data = DataConfig(path=args.data)

        def source_for_seed(seed: int) -> Any:
            return open_source(data, args.seed + seed)

        eval_acts = open_source(data, args.seed).sample(cfg.eval_rows)
    result = run_l0_search(source_for_seed, cfg, train, Path(args.out), eval_acts)
    print((Path(args.out) / "report.md").read_text())
    print(json.dumps({"chosen_l0": result.chosen_l0, "report": str(Path(args.out) / "report.md"),
                      "trained": len(result.trained), "reused": len(result.reused)}))
    return 0
