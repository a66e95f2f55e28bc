"""``saelab lfads synth|nwb|train|pbt|eval``: AutoLFADS on spiking data (sequential VAE with
coordinated dropout, sample validation and population-based training)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from saelab.config import add_arguments, args_to_dict, from_dict, load_file

EPILOG = """Typical use:

  saelab lfads synth --out lorenz.npz --n-trials 1000            # data with ground truth
  saelab lfads nwb session.nwb --out session.npz --bin-ms 10      # or your own recording
  saelab lfads train --data lorenz.npz --out runs/lfads --steps 2000
  saelab lfads pbt --data lorenz.npz --out runs/autolfads --population 8 --generations 10
  saelab lfads eval runs/lfads --data lorenz.npz

A run file (TOML/JSON) may replace the flags: data = "...", out = "...", n_train = 0,
[model] (LFADS sizes), [train] (optimisation, cd_rate, sv_rate, KL/L2 weights and ramps) and,
for pbt, [autolfads] (population, generations, steps_per_generation, initial ranges).
Flags override the file. Rerunning the same command resumes from the last checkpoint."""


def add_parser(sub: Any) -> None:
    from saelab.lfads.autolfads import AutoLFADSConfig
    from saelab.lfads.config import LFADSModelConfig, LFADSTrainConfig, SyntheticConfig
    from saelab.lfads.nwb import NWBConfig

    p = sub.add_parser("lfads", help="AutoLFADS: latent dynamics and firing rates from spikes",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="lfads_action", metavar="ACTION", required=True)

    synth = actions.add_parser("synth", help="synthetic Lorenz / chaotic-RNN spiking data with "
                               "ground truth")
    synth.add_argument("--out", required=True, help="spikes file to write (.npz)")
    add_arguments(synth, SyntheticConfig, prefix="synth.", flag_prefix="")

    nwb = actions.add_parser("nwb", help="bin the spikes of an NWB file into trials")
    nwb.add_argument("file", help="NWB file (units and trials tables)")
    nwb.add_argument("--out", required=True, help="spikes file to write (.npz)")
    add_arguments(nwb, NWBConfig, prefix="nwb.", flag_prefix="")

    for name, text in (("train", "train one LFADS model, then evaluate it on the test trials"),
                       ("pbt", "AutoLFADS: population-based training on Ray Tune, selected by "
                        "sample-validation loss")):
        q = actions.add_parser(name, help=text, description=text, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("config", nargs="?", help="run file (.toml or .json)")
        q.add_argument("--data", help="spikes file (.npz)")
        q.add_argument("--out", help="output folder (default: runs/lfads or the file's out)")
        q.add_argument("--n-train", type=int, help="use only the first N training trials")
        add_arguments(q.add_argument_group("model"), LFADSModelConfig, prefix="model.",
                      flag_prefix="")
        add_arguments(q.add_argument_group("training"), LFADSTrainConfig, prefix="train.",
                      flag_prefix="")
        if name == "pbt":
            add_arguments(q.add_argument_group("population-based training"), AutoLFADSConfig,
                          prefix="auto.", flag_prefix="pbt-")
            q.add_argument("--fresh", action="store_true",
                           help="refuse to resume: fail if --out already holds a run")

    ev = actions.add_parser("eval", help="metrics and report of a trained model on test trials")
    ev.add_argument("run_folder", metavar="RUN", help="run folder (or its final/ folder)")
    ev.add_argument("--data", required=True, help="spikes file with test trials (.npz)")
    ev.add_argument("--out", help="folder for the report (default: the run folder)")
    p.set_defaults(run=run)


def _run_config(args: argparse.Namespace) -> Any:
    from saelab.lfads.config import LFADSModelConfig, LFADSRunConfig, LFADSTrainConfig

    doc = load_file(args.config) if args.config else {}
    doc.pop("autolfads", None)
    doc.setdefault("model", {}).update(args_to_dict(args, LFADSModelConfig, "model."))
    doc.setdefault("train", {}).update(args_to_dict(args, LFADSTrainConfig, "train."))
    for key in ("data", "out", "n_train"):
        if getattr(args, key) is not None:
            doc[key] = getattr(args, key)
    cfg = from_dict(LFADSRunConfig, doc)
    if args.config and cfg.data and not Path(cfg.data).is_absolute() and args.data is None:
        cfg.data = str(Path(args.config).parent / cfg.data)
    if not cfg.data:
        raise ValueError("no spikes file: pass --data FILE.npz (make one with `saelab lfads "
                         "synth` or `saelab lfads nwb`)")
    return cfg


def _evaluate_and_report(model_folder: Path, data: Any, out: Path, title: str) -> None:
    from saelab.lfads.evaluate import evaluate, format_report, write_report
    from saelab.lfads.trainer import load_model

    if data.test_spikes is None:
        print("the data has no test trials: no evaluation", file=sys.stderr)
        return
    result, arrays = evaluate(load_model(model_folder), data)
    paths = write_report(result, data, arrays["rates"], out, title)
    print(format_report(result, title))
    print(f"report: {paths['markdown']}, plot: {paths['plot']}")


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    from saelab.lfads.data import SpikeData

    if extra:
        raise ValueError(f"unrecognized arguments {extra}")
    action = args.lfads_action
    if action == "synth":
        from saelab.lfads.config import SyntheticConfig
        from saelab.lfads.data import synthetic

        cfg = from_dict(SyntheticConfig, args_to_dict(args, SyntheticConfig, "synth."))
        data = synthetic(cfg)
        data.save(args.out)
        print(f"wrote {args.out}: {cfg.system}, {data.spikes.shape[0]} training + "
              f"{0 if data.test_spikes is None else len(data.test_spikes)} test trials, {data.n_in} + {data.n_heldout} "
              f"held-out neurons, {data.spikes.shape[1]} bins")
        return 0
    if action == "nwb":
        from saelab.lfads.nwb import NWBConfig, load_nwb

        data = load_nwb(args.file, from_dict(NWBConfig, args_to_dict(args, NWBConfig, "nwb.")))
        data.save(args.out)
        n_test = 0 if data.test_spikes is None else len(data.test_spikes)
        print(f"wrote {args.out}: {len(data.spikes)} training + {n_test} test trials, "
              f"{data.n_in} + {data.n_heldout} held-out units, {data.spikes.shape[1]} bins of "
              f"{data.dt * 1000:g} ms")
        return 0
    if action == "eval":
        folder = Path(args.run_folder)
        _evaluate_and_report(folder, SpikeData.load(args.data), Path(args.out or folder),
                             f"LFADS evaluation of {folder}")
        return 0
    cfg = _run_config(args)
    out = Path(cfg.out)
    data = SpikeData.load(cfg.data).subset(cfg.n_train)
    if action == "train":
        from saelab.lfads.trainer import LFADSTrainer

        print(f"LFADS: {len(data.spikes)} trials × {data.spikes.shape[1]} bins × {data.n_in} "
              f"(+{data.n_heldout} held-out) neurons -> {out}", file=sys.stderr)
        LFADSTrainer(data, cfg.model, cfg.train, out).fit()
        _evaluate_and_report(out, data, out, f"LFADS on {Path(cfg.data).name}")
        return 0
    from saelab.lfads.autolfads import (
        AutoLFADSConfig,
        best_trial_folder,
        format_rows,
        run_autolfads,
    )

    doc = load_file(args.config).get("autolfads", {}) if args.config else {}
    doc.update(args_to_dict(args, AutoLFADSConfig, "auto."))
    auto = from_dict(AutoLFADSConfig, doc, where="autolfads")
    print(f"AutoLFADS: population {auto.population}, {auto.generations} generations × "
          f"{auto.steps_per_generation} steps -> {out}", file=sys.stderr)
    rows = run_autolfads(cfg, auto, out, resume=not args.fresh)
    print(format_rows(rows))
    best = best_trial_folder(out, rows)
    print(f"\nbest worker (lowest sample-validation loss): {best}")
    _evaluate_and_report(best, data, out, f"AutoLFADS on {Path(cfg.data).name} (best worker)")
    return 0
