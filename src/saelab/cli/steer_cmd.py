"""``saelab steer``: generate with and without SAE latent edits; print both side by side and
the change of the next-token distribution (KL)."""

from __future__ import annotations

import argparse
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

from saelab.config import ConfigError
from saelab.io import atomic_write_json, load
from saelab.models.hf import load_hf_model
from saelab.steer import Intervention, SteerResult, parse_edit, steer_text

EPILOG = """examples:
  saelab steer runs/sae/final/topk --model gpt2 --hook transformer.h.5 \\
      --prompt "The weather today is" --edit 1234:add:8
  saelab steer runs/sae/final/topk --model ./my_lm --prompt "Once" --edit 7:clamp:0 --edit 9:scale:3 \\
      --positions 0 1 2 --reconstruction --json steer.json
  saelab steer --spec steer.json --model gpt2 --prompt "Hi"    # several SAEs / hooks
Edits: LATENT:add:ALPHA (adds ALPHA·d_j), LATENT:clamp:VALUE, LATENT:scale:FACTOR, LATENT:zero.
A --spec file is {"interventions": [{"sae": DIR, "hook": H, "edits": ["3:add:4"],
"positions": null, "keep_error": true}, ...]}. KL is KL(p_unsteered || p_steered) in nats."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("steer", help="steer a causal LM by editing SAE latents",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae", nargs="?", help="SAE folder (cfg.json + sae.safetensors)")
    p.add_argument("--model", help="Hugging Face hub id or local folder (default: the SAE's "
                   "recorded model_name)")
    p.add_argument("--hook", help="module path to edit (default: the SAE's hook_name)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--edit", action="append", default=[], help="latent edit, e.g. 12:add:4")
    p.add_argument("--positions", type=int, nargs="+", help="token positions to edit "
                   "(prompt and generated tokens counted from 0; default: all)")
    p.add_argument("--reconstruction", action="store_true", help="splice the SAE "
                   "reconstruction instead of keeping the error term x − x̂")
    p.add_argument("--spec", help="JSON file with several interventions (see below)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding "
                   "(the same seed for both runs)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=5, help="next tokens to list before/after")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results (one object per prompt) to this file")
    p.set_defaults(run=run)


def interventions_from_args(args: argparse.Namespace) -> tuple[list[Intervention], str]:
    """The interventions named by the flags or the --spec file, and the model to load."""
    if args.spec:
        spec = json.loads(Path(args.spec).read_text())
        items = spec.get("interventions") if isinstance(spec, dict) else None
        if not items:
            raise ConfigError(f"{args.spec} has no 'interventions' list; see saelab steer --help")
        out = []
        for i, item in enumerate(items):
            missing = {"sae", "edits"} - set(item)
            if missing:
                raise ConfigError(f"{args.spec}: intervention {i} lacks {sorted(missing)}")
            sae = load(item["sae"], device=args.device)
            hook = item.get("hook") or sae.cfg.hook_name
            if not hook:
                raise ConfigError(f"{args.spec}: intervention {i} needs a 'hook' (the SAE "
                                  "records none)")
            out.append(Intervention(sae, hook, [parse_edit(e) for e in item["edits"]],
                                    item.get("positions"), bool(item.get("keep_error", True))))
        model = args.model or spec.get("model") or out[0].sae.cfg.model_name
        return out, model
    if not args.sae or not args.edit:
        raise ConfigError("give an SAE folder and at least one --edit (or a --spec file)")
    sae = load(args.sae, device=args.device)
    hook = args.hook or sae.cfg.hook_name
    model = args.model or sae.cfg.model_name
    if not hook or not model:
        raise ConfigError(f"the SAE at {args.sae} records no model_name/hook_name; pass --model "
                          "and --hook")
    iv = Intervention(sae, hook, [parse_edit(e) for e in args.edit], args.positions,
                      keep_error=not args.reconstruction)
    return [iv], model


def side_by_side(left: str, right: str, width: int = 44) -> str:
    """Two wrapped columns headed 'unsteered' and 'steered'."""
    a = textwrap.wrap(left.replace("\n", " ⏎ "), width) or [""]
    b = textwrap.wrap(right.replace("\n", " ⏎ "), width) or [""]
    lines = [f"{'unsteered':<{width}} | steered", f"{'-' * width}-+-{'-' * width}"]
    lines += [f"{x:<{width}} | {y}" for x, y in itertools.zip_longest(a, b, fillvalue="")]
    return "\n".join(lines)


def format_result(result: SteerResult) -> str:
    lines = [f"prompt: {result.prompt}", side_by_side(result.unsteered, result.steered),
             f"KL(p_unsteered || p_steered) next token: {result.kl_next_token:.4f} nats; "
             f"mean over the prompt: {result.kl_mean_prompt:.4f}",
             "next token   unsteered                 | steered"]
    for (t0, p0), (t1, p1) in zip(result.top_unsteered, result.top_steered, strict=True):
        lines.append(f"             {t0!r:<16} {p0:>7.3f}  | {t1!r:<16} {p1:>7.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    interventions, model_name = interventions_from_args(args)
    if not model_name:
        raise ConfigError("no model: pass --model")
    loaded = load_hf_model(model_name, device=args.device)
    if not loaded.is_causal_lm:
        raise ConfigError(f"{model_name} is not a causal LM; steering text needs one")
    results = []
    for prompt in args.prompt:
        result = steer_text(loaded.model, loaded.tokenizer, prompt, interventions,
                            max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                            temperature=args.temperature, seed=args.seed, top_n=args.top)
        print(format_result(result) + "\n", flush=True)
        results.append(result.to_dict())
    if args.json:
        atomic_write_json(Path(args.json), {"model": model_name, "results": results})
        print(f"results: {args.json}")
    return 0
