"""``saelab features``: build an SAE's feature store, or export it as static HTML pages.

Actions: ``build`` (stream an activation cache, or a model over text, through the SAE and write
SAE_DIR/features/features.db) and ``export`` (self-contained HTML pages for sharing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from saelab.config import add_arguments, args_to_dict, from_dict

BUILD_EPILOG = """examples:
  saelab features build runs/topk/final/topk --cache caches/h5
  saelab features build runs/topk/final/topk --model gpt2 --hook transformer.h.5 --text notes.txt --max-tokens 1000000
  saelab features export runs/topk/final/topk --html share/topk --latents 0-499
Then: saelab explore runs/topk/final/topk. A killed build resumes when rerun with the same
command; a finished store is kept unless --rebuild (labels and explanations are carried over)."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("features", allow_abbrev=False,
                       help="build an SAE's feature store (top contexts, histograms, logits)",
                       description=__doc__, epilog=BUILD_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_build(actions)
    _add_export(actions)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.features_action(args))


def _add_build(actions: Any) -> None:
    from saelab.features import FeatureBuildConfig
    from saelab.text.packing import TextConfig

    p = actions.add_parser("build", allow_abbrev=False, help="build the feature store of an SAE",
                           description="Encode every row of an activation cache (or of a model "
                           "run over text) with the SAE and store per-latent statistics, "
                           "top and quantile-sampled contexts, logit effects, decoder "
                           "neighbours and (board-game SAEs) board labels. docs/features.md.",
                           epilog=BUILD_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sae", help="SAE folder (cfg.json + sae.safetensors)")
    p.add_argument("--cache", help="activation cache folder the SAE reads (from saelab cache)")
    p.add_argument("--model", help="Hugging Face id or folder: run it over --text (no cache), "
                   "or, with --cache, the model for logit effects and token strings")
    p.add_argument("--hook", help="module path the SAE reads (default: the SAE's hook_name)")
    p.add_argument("--text", nargs="+", action="extend", default=[],
                   help="text sources when building straight from --model")
    p.add_argument("--max-tokens", type=int, default=1_000_000,
                   help="with --model/--text: encode at most this many tokens (0 = all)")
    p.add_argument("--batch-contexts", type=int, default=8,
                   help="with --model/--text: contexts per model forward pass")
    p.add_argument("--out", help="store folder (default: SAE/features)")
    p.add_argument("--rebuild", action="store_true",
                   help="build again over a finished store (its labels and explanations are kept)")
    p.add_argument("--no-model", action="store_true",
                   help="do not load the model: no logit effects, board labels or token strings")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_arguments(p.add_argument_group("store options"), FeatureBuildConfig)
    add_arguments(p.add_argument_group("text options (with --model/--text)"), TextConfig)
    p.set_defaults(features_action=_build)


def _build(args: argparse.Namespace) -> int:
    from saelab.features import (
        CacheRows,
        FeatureBuildConfig,
        ModelRows,
        ModelSpec,
        build_store,
        load_model,
    )
    from saelab.io import load
    from saelab.text.packing import TextConfig

    cfg = from_dict(FeatureBuildConfig, args_to_dict(args, FeatureBuildConfig))
    sae = load(args.sae)
    out = Path(args.out or Path(args.sae) / "features")
    if bool(args.cache) == bool(args.text):
        raise ValueError("give either --cache CACHE or --model MODEL --text TEXT (with --hook "
                         "or an SAE that records its hook); see saelab features build --help")
    loaded = None
    if args.cache:
        stream: Any = CacheRows(args.cache, batch_rows=max(cfg.batch_rows, 4096))
        spec = ModelSpec.of_cache(args.cache)
        if args.model:
            spec.kind, spec.name = ("hf" if spec.kind != "game" else "game"), args.model
        tokens = stream.tokens
        source = str(Path(args.cache).resolve())
        if not args.no_model and spec.kind != "none":
            try:
                loaded = load_model(spec)
            except (RuntimeError, OSError, ValueError) as err:
                print(f"features: warning: could not load model {spec.name!r} ({err}); the store "
                      "gets no logit effects and shows token ids — pass --model", file=sys.stderr)
    else:
        model_name = args.model or sae.cfg.model_name
        hook = args.hook or sae.cfg.hook_name
        if not model_name or not hook:
            raise ValueError("--text needs --model and --hook (the SAE records none)")
        text = from_dict(TextConfig, args_to_dict(args, TextConfig))
        spec = ModelSpec("hf", model_name, hook, prepend_bos=text.prepend_bos)
        loaded = load_model(spec)
        tokenizer = loaded.codec.tokenizer  # type: ignore[attr-defined]
        stream = ModelRows(loaded.model, tokenizer, args.text, hook, text,
                           batch_contexts=args.batch_contexts, max_tokens=args.max_tokens)
        tokens = None
        source = json.dumps({"model": model_name, "hook": hook, "text": args.text,
                             "max_tokens": args.max_tokens})
    result = build_store(sae, stream, out, cfg, spec=spec, tokens=tokens, loaded=loaded,
                         sae_path=str(Path(args.sae).resolve()), source=source,
                         rebuild=args.rebuild, progress=not args.quiet)
    print(json.dumps({"store": str(result.path), "latents": result.n_latents,
                      "tokens": result.n_rows, "seconds": round(result.seconds, 1),
                      "already_built": result.skipped}, indent=2))
    print(f"browse it: saelab explore {args.sae}" + (f" --store {out}" if args.out else ""))
    return 0


def _add_export(actions: Any) -> None:
    p = actions.add_parser("export", allow_abbrev=False, help="static HTML pages of a store",
                           description="Write index.html and feature/<id>.html (self-contained "
                           "pages with relative links) for sharing without a server.")
    p.add_argument("store", help="store folder or file, or an SAE folder holding features/")
    p.add_argument("--html", required=True, metavar="DIR", help="output folder (replaced)")
    p.add_argument("--latents", default="", help="which latents, e.g. 0-99,512 (default: all)")
    p.set_defaults(features_action=_export)


def parse_latents(spec: str) -> list[int] | None:
    """``"0-3,9"`` -> [0, 1, 2, 3, 9]; empty -> None (all)."""
    if not spec.strip():
        return None
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad latent list {spec!r}: write ids and ranges like 0-99,512")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _export(args: argparse.Namespace) -> int:
    from saelab.explore import export_html
    from saelab.features import FeatureStore

    store = FeatureStore(args.store)
    out = export_html(store, args.html, parse_latents(args.latents))
    print(f"wrote {out / 'index.html'}")
    return 0
