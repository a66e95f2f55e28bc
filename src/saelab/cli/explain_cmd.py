"""``saelab explain``: explain an SAE's latents and score the explanations.

Reads examples from the SAE's feature store (``saelab features build``) and writes
explanations, scores and SAGE transcripts back into it (``saelab explore`` shows and searches
them), with per-latent JSON records in the run folder. A killed run resumes when rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saelab.config import add_arguments, args_to_dict, from_dict, to_dict

EPILOG = """examples:
  saelab explain runs/topk/final/topk --sample 100 --method ngram --scorer embedding
  OPENAI_API_KEY=... saelab explain runs/topk/final/topk --latents 0-49 --method llm \\
      --scorer detection fuzzing simulation --llm-base-url http://localhost:8000/v1 \\
      --llm-model meta-llama/Llama-3.1-8B-Instruct
  saelab explain runs/topk/final/topk --latents 7,12 --agentic --scorer generation simulation \\
      --llm-base-url http://localhost:11434/v1 --llm-model qwen2.5:14b
  saelab explain runs/topk/final/topk --latents 0-9 --method llm --scorer detection --loopback
--loopback answers with saelab's built-in scripted server on 127.0.0.1 (a dry run of the whole
pipeline, no LLM). The API key is read from the variable named by --llm-api-key-env and never
written. Scorers: detection fuzzing simulation generation (LLM) and embedding (offline)."""


def add_parser(sub: Any) -> None:
    from saelab.interp import LLMConfig, SageConfig, SamplingConfig

    p = sub.add_parser("explain", allow_abbrev=False, help="explain latents and score the "
                       "explanations (LLM, offline, or the SAGE agent)", description=__doc__,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="SAE folder with a feature store (features/features.db), or "
                   "the store folder or file")
    which = p.add_argument_group("which latents")
    which.add_argument("--latents", help="ids and ranges, e.g. 0-99 or 3,5,7 or 0-9,40")
    which.add_argument("--sample", type=int, help="this many random latents among those that "
                       "fire often enough")
    p.add_argument("--method", choices=["ngram", "llm"], default=None,
                   help="explainer: ngram (offline) or llm (default: llm with --agentic or an "
                   "--llm-model, else ngram)")
    p.add_argument("--agentic", action="store_true", help="explain with the SAGE agent "
                   "(probes the real model and SAE)")
    p.add_argument("--scorer", nargs="+", action="extend", default=[],
                   choices=["detection", "fuzzing", "simulation", "generation", "embedding"],
                   help="scorers to run (default: embedding offline, detection+fuzzing with an "
                   "LLM)")
    p.add_argument("--sae", help="SAE folder for the SAGE probes and the generation scorer "
                   "(default: the one the store was built from)")
    p.add_argument("--out", help="run folder (default: STORE_DIR/explain/RUN_NAME)")
    p.add_argument("--run-name", help="name of this run's rows in the store (default: method "
                   "and model)")
    p.add_argument("--no-store", action="store_true", help="write only the run folder")
    p.add_argument("--loopback", action="store_true", help="use the built-in scripted "
                   "chat-completions server on 127.0.0.1 instead of an LLM (dry run)")
    p.add_argument("--generation-texts", type=int, default=10, help="texts the generation "
                   "scorer asks for (default: 10)")
    p.add_argument("--generation-threshold", type=float, default=None, help="absolute "
                   "activation a generated text must reach (default: 0.3 x the latent's "
                   "maximum over its examples)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    add_arguments(p.add_argument_group("LLM server"), LLMConfig, prefix="llm_")
    add_arguments(p.add_argument_group("example sampling"), SamplingConfig)
    add_arguments(p.add_argument_group("SAGE agent"), SageConfig, prefix="sage_")
    p.set_defaults(run=run)


def parse_latents(spec: str) -> list[int]:
    """``"0-3,7"`` → [0, 1, 2, 3, 7]."""
    out: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad latent list {spec!r}: write ids and ranges like 0-99,120")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad range {part!r}: the end is below the start")
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def _loopback(enabled: bool) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    from saelab.interp.loopback import ChatServer, KeywordResponder

    with ChatServer(KeywordResponder()) as server:
        yield server.url


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    from saelab.features import FeatureStore, StoreError, resolve_store
    from saelab.interp import LLMConfig, SageConfig, SamplingConfig

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if bool(args.latents) == bool(args.sample):
        parser.error("pass exactly one of --latents (ids, ranges) or --sample N")
    llm_cfg = from_dict(LLMConfig, args_to_dict(args, LLMConfig, prefix="llm_"))
    sage_cfg = from_dict(SageConfig, args_to_dict(args, SageConfig, prefix="sage_"))
    sampling = from_dict(SamplingConfig, args_to_dict(args, SamplingConfig))
    if args.loopback and not llm_cfg.model:
        llm_cfg.model = "loopback"
    method = args.method or ("llm" if (args.agentic or llm_cfg.model) else "ngram")
    scorers = args.scorer or (["embedding"] if method == "ngram" and not args.agentic
                              else ["detection", "fuzzing"])
    needs_llm = method == "llm" or args.agentic or any(s != "embedding" for s in scorers)
    if needs_llm and not llm_cfg.model:
        raise ValueError(f"method {method!r} / scorers {scorers} need an LLM: pass --llm-model "
                         "NAME and --llm-base-url URL (any OpenAI-compatible server), or "
                         "--loopback for a dry run")
    try:
        store_file = resolve_store(args.store)
    except StoreError as err:
        raise ValueError(str(err)) from err
    store = FeatureStore(store_file)
    if args.latents:
        latents = parse_latents(args.latents)
        bad = [lat for lat in latents if not store.has(lat)]
        if bad:
            raise ValueError(f"latents {bad[:5]} are outside this SAE (0..{store.n_latents - 1})")
    else:
        fired = [r["id"] for r in store.list_latents("id", limit=store.n_latents)
                 if r["n_fired"] >= sampling.min_activating]
        latents = sorted(random.Random(sampling.seed).sample(fired, min(args.sample, len(fired))))
    name = args.run_name or re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(
        [("sage" if args.agentic else method), llm_cfg.model if needs_llm else "offline"]))
    out = Path(args.out) if args.out else store_file.parent / "explain" / name
    if needs_llm and not llm_cfg.cache_dir:
        llm_cfg.cache_dir = str(out / "llm_cache")

    from saelab.interp.examples import LatentExamples
    from saelab.interp.store import examples_from_store
    examples = examples_from_store(store, latents, sampling)
    skipped = [lat for lat in latents if lat not in examples]
    print(f"{len(examples)} of {len(latents)} latents have at least {sampling.min_activating} "
          "activating windows" + (f"; skipping {len(skipped)}" if skipped else ""))
    ordered: list[LatentExamples] = [examples[lat] for lat in latents if lat in examples]
    with _loopback(args.loopback) as url:
        if url is not None:
            llm_cfg.base_url = url
        summary = _run_pipeline(args, store, store_file, out, name, method, scorers, llm_cfg,
                                sage_cfg, ordered, needs_llm)
    from saelab.io import atomic_write_json
    config = {"store": str(store_file), "latents": latents, "method": method,
              "agentic": args.agentic, "scorers": scorers, "llm": to_dict(llm_cfg),
              "sampling": to_dict(sampling), "sage": to_dict(sage_cfg), "run_name": name}
    atomic_write_json(out / "run.json", {"config": config, "summary": summary})
    print(json.dumps(summary, indent=1))
    print(f"results: {out}" + ("" if args.no_store else f" and {store_file} (saelab explore)"))
    return 0


def _run_pipeline(args: argparse.Namespace, store: Any, store_file: Path, out: Path, name: str,
                  method: str, scorers: list[str], llm_cfg: Any, sage_cfg: Any,
                  examples: list[Any], needs_llm: bool) -> dict[str, Any]:
    from saelab.interp import (
        DetectionScorer,
        EmbeddingScorer,
        FolderSink,
        FuzzingScorer,
        GenerationScorer,
        LLMClient,
        LLMExplainer,
        NgramExplainer,
        Pipeline,
        SageExplainer,
        SimulationScorer,
    )
    from saelab.interp.store import StoreSink

    client = LLMClient(llm_cfg) if needs_llm else None
    probe = None
    if args.agentic or "generation" in scorers:
        probe = _probe(args, store)
    built: list[Any] = []
    for s in scorers:
        if s == "embedding":
            built.append(EmbeddingScorer())
        elif s == "generation":
            built.append(GenerationScorer(client, probe, n=args.generation_texts,  # type: ignore[arg-type]
                                          threshold=args.generation_threshold))
        else:
            cls = {"detection": DetectionScorer, "fuzzing": FuzzingScorer,
                   "simulation": SimulationScorer}[s]
            built.append(cls(client))  # type: ignore[abstract]
    if args.agentic:
        explainer: Any = SageExplainer(client, probe, sage_cfg)  # type: ignore[arg-type]
    elif method == "llm":
        explainer = LLMExplainer(client)  # type: ignore[arg-type]
    else:
        explainer = NgramExplainer()
    sink = FolderSink(out) if args.no_store else StoreSink(store_file, out, name)
    pipeline = Pipeline(explainer, built, sink, client=client,
                        max_latents=max(4, 2 * llm_cfg.max_concurrency),
                        progress=not args.no_progress, label=f"explain ({name})")
    return pipeline.run(examples).to_dict()


def _probe(args: argparse.Namespace, store: Any) -> Any:
    from saelab.features import ModelSpec
    from saelab.interp import ActivationProbe
    from saelab.io import load

    sae_path = args.sae or store.meta.get("sae_path")
    if not sae_path or not Path(sae_path).is_dir():
        raise ValueError("SAGE and the generation scorer run text through the SAE: pass --sae "
                         "SAE_DIR (the store does not record a usable SAE folder)")
    spec = ModelSpec.from_dict(store.meta["model"])
    if spec.kind != "hf" or not spec.name or not spec.hook:
        raise ValueError(f"SAGE and the generation scorer need a text model; this store's model "
                         f"is {spec.kind!r} {spec.name!r}")
    sae = load(sae_path)
    store.check_sae(sae)
    from saelab.models.hf import load_hf_model
    loaded = load_hf_model(spec.name)
    return ActivationProbe(loaded.model, loaded.tokenizer, spec.hook, sae)
