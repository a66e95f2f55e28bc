"""``saelab train``: train one SAE (flags) or a sweep (config file), resumably."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

import torch

from saelab.architectures.base import SAE
from saelab.config import add_arguments, args_to_dict, load_file
from saelab.data.open import open_source
from saelab.distributed import init_from_env
from saelab.metrics.seeds import cross_seed_consistency, summarise_seeds
from saelab.ops import tune_cpu_allocator
from saelab.registry import architectures, get_architecture
from saelab.run_config import DataConfig, RunConfig, load_run_config, seed_name
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer

EPILOG = """examples:
  saelab train --data acts.npy --arch topk --k 32 --expansion 16 --total-tokens 5000000 --out runs/topk
  saelab train --config sweep.toml          (several SAEs on one stream; see README)
  saelab train --arch jumprelu --help       (options of one architecture)
  saelab train ... --device cuda             (train on a GPU)
  torchrun --nproc-per-node 4 -m saelab.cli train ...   (data-parallel over 4 processes/GPUs)
  torchrun --nproc-per-node 4 -m saelab.cli train --arch topk ... --shard-latents
                                            (each of 4 GPUs holds a quarter of the latents)
  saelab train ... --autocast bf16           (bf16 matmuls; weights, Adam and losses stay fp32)
Rerunning the same command resumes from the newest checkpoint in --out."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train SAEs on activations", description=__doc__,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument("--config", help="run file (.toml or .json) with [data], [train], [saes.NAME]")
    p.add_argument("--out", help="output folder (default: runs/saelab)")
    p.add_argument("--data", dest="data_path",
                   help="activations: .npy or .safetensors file, or a `saelab cache` folder")
    add_arguments(p.add_argument_group("data options"), DataConfig, prefix="data_", skip=("path",))
    p.add_argument("--arch", choices=sorted(architectures()), help="architecture of a single SAE")
    p.add_argument("--name", help="name of that SAE (default: the architecture name)")
    p.add_argument("--seeds", type=int, help="train each SAE N times from different "
                   "initialisations (NAME_seed0..); prints mean ± 95%% interval and Stab/Ord "
                   "across seeds")
    p.add_argument("--fresh", action="store_true",
                   help="refuse to resume: fail if --out already has checkpoints")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though the data differs from the data the checkpoint was "
                   "trained on (normally refused)")
    add_arguments(p.add_argument_group("training options"), TrainConfig)
    p.set_defaults(run=run, _parser=p)


def _arch_parser(arch: str) -> argparse.ArgumentParser:
    cls = get_architecture(arch)
    p = argparse.ArgumentParser(prog=f"saelab train --arch {arch}", add_help=False,
                                allow_abbrev=False)
    add_arguments(p.add_argument_group(f"{arch} options ({cls.__doc__ or ''}".strip()[:70] + ")"),
                  cls.config_class, prefix="sae_", skip=("lr", "adam_beta1"), flag_prefix="")
    return p


def build_run_config(args: argparse.Namespace, extra: list[str]) -> RunConfig:
    data: dict[str, Any] = load_file(args.config) if args.config else {}
    if args.out is not None:
        data["out"] = args.out
    if args.seeds is not None:
        data["seeds"] = args.seeds
    data_section = dict(data.get("data", {}))
    data_section.update(args_to_dict(args, DataConfig, prefix="data_"))
    data["data"] = data_section
    train_section = dict(data.get("train", {}))
    train_section.update(args_to_dict(args, TrainConfig))
    data["train"] = train_section
    if args.arch:
        arch_args = _arch_parser(args.arch).parse_args(extra)
        opts = {"architecture": args.arch,
                **args_to_dict(arch_args, get_architecture(args.arch).config_class, prefix="sae_")}
        data.setdefault("saes", {})[args.name or args.arch] = opts
    elif extra:
        raise ValueError(f"unrecognized arguments {extra}; architecture options need --arch")
    return load_run_config(data)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    print(f"saelab train: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if args.help:
        args._parser.print_help()
        if args.arch:
            print()
            _arch_parser(args.arch).print_help()
        else:
            print("\narchitectures: " + ", ".join(sorted(architectures())))
        return 0
    cfg = build_run_config(args, extra)
    tune_cpu_allocator()  # reuse large freed buffers instead of re-faulting them every step
    if not cfg.data.path:
        raise ValueError("no activations given: pass --data FILE or set [data] path in --config")
    source = open_source(cfg.data, cfg.train.seed)
    group = init_from_env(cfg.train.device, cfg.train.dist_timeout_s)  # under torchrun
    try:
        trainer = Trainer(cfg.sae_configs(), cfg.train, source, cfg.out,
                          run_config=cfg.to_dict(), dist=group)
        if group is None or group.is_main:
            layout = "latent-sharded" if cfg.train.shard_latents else "data parallel"
            ranks = f" on {group.world_size} ranks, {layout}" if group is not None else ""
            print(f"training {len(trainer.saes)} SAE(s) on {cfg.data.path} "
                  f"({source.n_rows:,} rows × {source.d_in}) for {cfg.train.total_steps:,} steps"
                  f"{ranks} ({trainer.device}) -> {cfg.out}", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _one_line_warning
            final = trainer.fit(resume=not args.fresh, allow_data_change=args.allow_data_change)
    finally:
        if group is not None:
            torch.distributed.destroy_process_group()
    if group is not None and not group.is_main:
        return 0
    summary = {name: str(trainer.out_dir / "final" / name) for name in final}
    report: dict[str, Any] = {"saved": summary}
    if cfg.seeds > 1:
        report["across_seeds"] = seed_summary(trainer, final, list(cfg.saes), cfg.seeds)
    print(json.dumps(report, indent=2))
    return 0


def seed_summary(trainer: Trainer, final: dict[str, SAE], names: list[str],
                 seeds: int) -> dict[str, Any]:
    """Per SAE: the last logged metrics as mean ± 95% interval over seeds, and Stab/Ord between
    the seeds' decoders."""
    last: dict[str, dict[str, float]] = {}
    log = trainer.out_dir / "metrics.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            last[record["sae"]] = record
    out: dict[str, Any] = {}
    for name in names:
        members = [seed_name(name, s) for s in range(seeds)]
        metrics = [{k: v for k, v in last[m].items() if k not in ("step", "tokens", "time", "sae")}
                   for m in members if m in last]
        entry: dict[str, Any] = {}
        if len(metrics) == seeds:
            entry["last_logged"] = {k: ci.to_dict() for k, ci in summarise_seeds(metrics).items()}
        # the final SAEs: whole even when the run was latent-sharded
        consistency = cross_seed_consistency([final[m].W_dec.detach() for m in members])
        entry["stability_across_seeds"] = consistency.stability.to_dict()
        entry["orderedness_across_seeds"] = consistency.orderedness.to_dict()
        out[name] = entry
    return out
