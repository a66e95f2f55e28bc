"""``saelab sarm train|score|explain``: reward models whose head reads SAE latents (SARM)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from saelab.config import ConfigError, add_arguments, args_to_dict, from_dict, to_dict
from saelab.io import atomic_write_bytes, atomic_write_json, load
from saelab.models.hf import load_hf_model
from saelab.sarm.data import Pair, read_pairs, tokenize_pairs
from saelab.sarm.explain import explain_tokens, format_explanation
from saelab.sarm.model import SARM, SARMConfig, load_sarm, read_sarm_meta, save_sarm
from saelab.sarm.train import SARMTrainConfig, pair_rewards, pairwise_accuracy, train_sarm
from saelab.steer.edits import parse_edit

EPILOG = """examples:
  saelab sarm train --model gpt2 --hook transformer.h.6 --sae runs/sae/final/topk \\
      --data prefs.jsonl --mode head --out runs/sarm
  saelab sarm score runs/sarm --data held_out.jsonl --out scores.jsonl
  saelab sarm explain runs/sarm --data held_out.jsonl --index 3 --top 10
  saelab sarm explain runs/sarm --chosen "Sure, here is" --rejected "No." --edit 17:add:2
Pairs: one JSON object per line, {"chosen": ..., "rejected": ...[, "prompt": ...]}.
--features raw trains the baseline: a linear head on the activations, without an SAE."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sarm", help="SAE-based reward models: train, score, explain",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="sarm_action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="train a reward head (and optionally the SAE/backbone)")
    t.add_argument("--model", required=True, help="Hugging Face hub id or local causal LM folder")
    t.add_argument("--hook", required=True, help="module path read at the last token")
    t.add_argument("--sae", help="SAE folder (not needed with --features raw)")
    t.add_argument("--features", default="pre_acts", choices=["pre_acts", "codes", "raw"])
    t.add_argument("--data", required=True, help="training pairs (JSON lines)")
    t.add_argument("--eval-data", help="held-out pairs scored after training")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    t.add_argument("--max-length", type=int, default=512, help="tokens kept per text (the last)")
    t.add_argument("--append-eos", action="store_true", help="end every text with EOS")
    add_arguments(t.add_argument_group("training options"), SARMTrainConfig)
    s = actions.add_parser("score", help="pairwise accuracy and rewards on pairs")
    s.add_argument("sarm", help="folder written by `saelab sarm train`")
    s.add_argument("--data", required=True, help="pairs (JSON lines)")
    s.add_argument("--out", help="write per-pair rewards as JSON lines here")
    e = actions.add_parser("explain", help="per-latent attribution w_j·z_j of one pair")
    e.add_argument("sarm", help="folder written by `saelab sarm train`")
    e.add_argument("--data", help="pairs file; with --index picks the pair")
    e.add_argument("--index", type=int, default=0)
    e.add_argument("--chosen", help="chosen text (instead of --data)")
    e.add_argument("--rejected", help="rejected text (instead of --data)")
    e.add_argument("--top", type=int, default=10)
    e.add_argument("--labels", help="JSON {latent: label} shown next to the latents")
    e.add_argument("--edit", action="append", default=[],
                   help="reward steering: edit a latent before the head, e.g. 17:add:2")
    e.add_argument("--json", help="write the explanation here")
    for sp in (t, s, e):
        sp.add_argument("--device", default="cpu")
        sp.set_defaults(run=run)


def _meta_and_tokenize_options(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    meta = read_sarm_meta(folder)
    return meta, meta.get("tokenize", {})


def _train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another --out or pass "
                          "--overwrite to replace it")
    train_cfg = from_dict(SARMTrainConfig, args_to_dict(args, SARMTrainConfig))
    if args.features != "raw" and not args.sae:
        raise ConfigError("--sae is required unless --features raw")
    loaded = load_hf_model(args.model, device=args.device)
    sae = load(args.sae, device=args.device) if args.sae and args.features != "raw" else None
    d_in = None
    if sae is None:
        d_in = int(getattr(loaded.model.config, "hidden_size", 0) or
                   getattr(loaded.model.config, "n_embd", 0))
    cfg = SARMConfig(hook=args.hook, features=args.features, model_name=args.model,
                     sae_path=str(Path(args.sae).resolve()) if sae is not None else "")
    sarm = SARM(loaded.model, cfg, sae, d_in=d_in)
    tokens = tokenize_pairs(loaded.tokenizer, read_pairs(args.data), args.max_length,
                            args.append_eos)
    history = train_sarm(sarm, tokens, train_cfg)
    metrics = {"train_accuracy": pairwise_accuracy(*pair_rewards(sarm, tokens)),
               "train_pairs": len(tokens), "seconds": round(history.seconds, 2),
               "final_bt_loss": history.bt_loss[-1]}
    if history.recon_nmse:
        metrics["final_nmse"] = history.recon_nmse[-1]
    if args.eval_data:
        held = tokenize_pairs(loaded.tokenizer, read_pairs(args.eval_data), args.max_length,
                              args.append_eos)
        metrics["eval_accuracy"] = pairwise_accuracy(*pair_rewards(sarm, held))
        metrics["eval_pairs"] = len(held)
    meta = {"training": to_dict(train_cfg), "metrics": metrics,
            "tokenize": {"max_length": args.max_length, "append_eos": args.append_eos}}
    save_sarm(sarm, out, meta, save_sae=train_cfg.mode != "head" and sae is not None,
              save_backbone=train_cfg.mode == "all")
    if train_cfg.mode == "all":
        loaded.tokenizer.save_pretrained(out / "backbone")
    print(json.dumps(metrics))
    print(f"SARM written to {out}")
    return 0


def _load(args: argparse.Namespace) -> tuple[SARM, Any, dict[str, Any]]:
    meta, tok_opts = _meta_and_tokenize_options(args.sarm)
    model_name = meta["config"]["model_name"]
    loaded = load_hf_model(Path(args.sarm) / "backbone" if meta.get("has_backbone")
                           else model_name, device=args.device)
    sarm = load_sarm(args.sarm, backbone=loaded.model, device=args.device)
    return sarm, loaded.tokenizer, tok_opts


def _score(args: argparse.Namespace) -> int:
    sarm, tokenizer, opts = _load(args)
    pairs = read_pairs(args.data)
    tokens = tokenize_pairs(tokenizer, pairs, opts.get("max_length", 512),
                            opts.get("append_eos", False))
    r_c, r_r = pair_rewards(sarm, tokens)
    accuracy = pairwise_accuracy(r_c, r_r)
    if args.out:
        lines = [json.dumps({"index": i, "reward_chosen": float(a), "reward_rejected": float(b),
                             "correct": bool(a > b)})
                 for i, (a, b) in enumerate(zip(r_c.tolist(), r_r.tolist(), strict=True))]
        atomic_write_bytes(Path(args.out), ("\n".join(lines) + "\n").encode())
        print(f"per-pair rewards: {args.out}", file=sys.stderr)
    print(json.dumps({"pairs": len(pairs), "pairwise_accuracy": accuracy,
                      "mean_margin": float((r_c - r_r).mean())}))
    return 0


def _explain(args: argparse.Namespace) -> int:
    sarm, tokenizer, opts = _load(args)
    if args.chosen is not None and args.rejected is not None:
        pair = Pair(args.chosen, args.rejected)
    elif args.data:
        pairs = read_pairs(args.data)
        if not 0 <= args.index < len(pairs):
            raise ConfigError(f"--index {args.index} is out of range: {args.data} has "
                              f"{len(pairs)} pairs")
        pair = pairs[args.index]
    else:
        raise ConfigError("give --chosen and --rejected, or --data (and --index)")
    tokens = tokenize_pairs(tokenizer, [pair], opts.get("max_length", 512),
                            opts.get("append_eos", False))
    labels = {int(k): str(v) for k, v in json.loads(Path(args.labels).read_text()).items()} \
        if args.labels else None
    exp = explain_tokens(sarm, tokens.chosen_ids, tokens.chosen_mask, tokens.rejected_ids,
                         tokens.rejected_mask, args.top, labels)
    print(format_explanation(exp))
    result: dict[str, Any] = exp.to_dict()
    if args.edit:
        edits = [parse_edit(e) for e in args.edit]
        with torch.no_grad():
            r_c = float(sarm(tokens.chosen_ids, tokens.chosen_mask, edits)[0])
            r_r = float(sarm(tokens.rejected_ids, tokens.rejected_mask, edits)[0])
        print(f"with {', '.join(e.describe() for e in edits)} before the head: reward chosen "
              f"{r_c:+.4f} rejected {r_r:+.4f}")
        result["steered"] = {"edits": args.edit, "reward_chosen": r_c, "reward_rejected": r_r}
    if args.json:
        atomic_write_json(Path(args.json), result)
    return 0


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    action = {"train": _train, "score": _score, "explain": _explain}[args.sarm_action]
    return action(args)
