"""``saelab sweep CONFIG``: grid, random or population-based search over any training or
architecture option, on Ray Tune (a local Ray, or an existing cluster by address)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EPILOG = """A sweep file is a run file with one [saes.NAME] table plus a [sweep] section:

  out = "runs/lr-sweep"
  [data]
  path = "acts.npy"
  [train]
  total_tokens = 2_000_000
  [saes.sae]
  architecture = "topk"
  k = 32
  [sweep]
  search = "pbt"                 # grid | random | pbt
  metric = "mse"                 # a logged training metric; mode = "min" | "max"
  num_samples = 4                # trials (grid: repeats of the grid)
  report_every = 100             # steps between reports = PBT perturbation interval
  address = ""                   # "" = local Ray; "ray://host:10001" = existing cluster
  [sweep.params]
  "train.lr" = {loguniform = [1e-4, 1e-2]}   # also uniform, randint, choice, or a list
  [sweep.pbt]
  quantile_fraction = 0.5

Results: OUT/sweep_results.{json,csv}, OUT/sweep_plot.png, one saelab run per trial in
OUT/trials/<id>/ (final SAE in final/). Rerunning the same command resumes the sweep."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="sweep or population-based training of SAEs (Ray Tune)",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="sweep file (.toml or .json)")
    p.add_argument("--out", help="output folder (default: the file's `out`)")
    p.add_argument("--fresh", action="store_true",
                   help="refuse to resume: fail if --out already holds a sweep")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    from saelab.sweep.config import load_sweep_file
    from saelab.sweep.runner import format_table, run_sweep

    if extra:
        raise ValueError(f"unrecognized arguments {extra}")
    sf = load_sweep_file(args.config)
    out = Path(args.out or sf.run.out)
    print(f"sweep: {sf.sweep.search} search over {', '.join(sf.sweep.params)} "
          f"({sf.sweep.num_samples} sample(s)) -> {out}", file=sys.stderr)
    rows = run_sweep(sf, out, resume=not args.fresh)
    print(format_table(rows, sf.sweep.metric, sf.sweep.mode))
    print(f"\nresults: {out / 'sweep_results.csv'}, plot: {out / 'sweep_plot.png'}")
    return 0
