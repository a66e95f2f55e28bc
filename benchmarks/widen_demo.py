"""Transcoder and crosscoder on the real MiniLM; TopK/Ordered SAEs on a tiny ESM-style protein
LM and a tiny ViT — each end to end through the ``saelab`` commands: cache, train, evaluate.

1. MiniLM (the packaged all-MiniLM-L6-v2), layer 3: one ``saelab cache`` pass stores the MLP's
   input (``encoder.layer.3.intermediate:input``), its output (``encoder.layer.3.output.dense``)
   and the residual stream after layers 2 and 3.
   - a TopK transcoder (MLP in → MLP out): explained variance of the MLP output on held-out
     cached rows, and ``saelab eval-model`` with the transcoder's prediction spliced in place of
     the MLP output: the sentence-embedding cosine (mean-pooled last hidden state, clean vs
     spliced), next to zero-ablating the MLP output;
   - a skip transcoder, the same way;
   - a TopK crosscoder reading and writing layers 2 and 3: explained variance per layer.
2. A tiny ESM-2-style model and a tiny ViT, built locally from their Hugging Face configs with
   random weights (nothing is downloaded), on synthetic FASTA sequences and toy images:
   ``saelab cache-proteins`` / ``cache-images`` → ``saelab train`` (TopK and Ordered for the
   protein LM, TopK for the ViT) → ``saelab eval`` on a held-out cache.

Token budgets are small (a few minutes on 2 busy cores); numbers are for these budgets only.
Usage: OMP_NUM_THREADS=1 python benchmarks/widen_demo.py [--out runs/widen] [--tokens 30000]
Prints one JSON document (also written to benchmarks/results/widen_demo.json).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

import saelab
from saelab.architectures.crosscoder import layer_explained_variance
from saelab.cli import main as saelab_main
from saelab.data.paired import open_paired
from saelab.metrics.core import explained_variance
from saelab.models import packaged_minilm_path
from saelab.sources.tiny import build_tiny_esm, build_tiny_vit, write_toy_fasta, write_toy_images
from saelab.text import corpus_path

HERE = Path(__file__).resolve().parent
MLP_IN, MLP_OUT = "encoder.layer.3.intermediate:input", "encoder.layer.3.output.dense"
RESID = ["encoder.layer.2", "encoder.layer.3"]


def cli(*args: str) -> dict:
    """Run a saelab command in-process; return the last JSON object it printed."""
    buf = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        code = saelab_main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"saelab {' '.join(map(str, args))} failed ({code})\n{buf.getvalue()}")
    text = buf.getvalue()
    print(f"  saelab {args[0]}: {time.perf_counter() - start:.1f} s", flush=True)
    starts = [i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")]
    return json.loads(text[starts[-1]:])


def hook_dir(cache: Path, hook: str) -> Path:
    return cache / hook.replace(":", "_").replace("/", "_")


def train(data: Path, out: Path, arch: str, tokens: int, batch: int, *extra: str,
          pair: tuple[Path, ...] = ()) -> Path:
    pair_args = ["--data-pair", *map(str, pair)] if pair else []
    cli("train", "--data", data, *pair_args, "--arch", arch, "--out", out, "--total-tokens",
        tokens, "--batch-size", batch, "--lr", "1e-3", "--no-progress", "--no-measure-peak",
        "--checkpoint-every", "0", "--init-samples", "4096", *extra)
    return out / "final" / arch


def minilm_part(out: Path, tokens: int, train_tokens: int) -> dict:
    minilm = str(packaged_minilm_path())
    corpus = str(corpus_path())
    cache, held = out / "minilm_cache", out / "minilm_held"
    hooks = [h for hook in (MLP_IN, MLP_OUT, *RESID) for h in ("--hook", hook)]
    cli("cache", "--model", minilm, *hooks, "--text", corpus, "--max-tokens", tokens,
        "--context-size", "128", "--out", cache)
    cli("cache", "--model", minilm, *hooks, "--text", corpus, "--max-tokens", tokens // 4,
        "--context-size", "128", "--seed", "1", "--out", held)
    result: dict = {"model": "all-MiniLM-L6-v2 (packaged)", "cache_tokens": tokens,
                    "train_tokens": train_tokens}
    held_pair = open_paired([hook_dir(held, MLP_IN), hook_dir(held, MLP_OUT)])
    rows = torch.from_numpy(held_pair.take(np.arange(held_pair.n_rows)))
    for name, extra in (("transcoder", ()), ("skip_transcoder", ("--skip",))):
        sae_dir = train(hook_dir(cache, MLP_IN), out / f"minilm_{name}", "transcoder",
                        train_tokens, 1024, "--k", "32", "--expansion", "8", *extra,
                        pair=(hook_dir(cache, MLP_OUT),))
        sae = saelab.load(sae_dir)
        x, y = sae.split_data(rows)
        with torch.no_grad():
            ev = explained_variance(y, sae(x))
        spliced = cli("eval-model", sae_dir, "--model", minilm, "--text", corpus,
                      "--max-tokens", "8192", "--context-size", "128", "--no-plot",
                      "--out", out / f"minilm_{name}_eval_model.json")
        full = json.loads((out / f"minilm_{name}_eval_model.json").read_text())
        result[name] = {
            "held_out_explained_variance_mlp_out": ev,
            "eval_model_explained_variance_mlp_out": spliced["explained_variance"],
            "l0": spliced["l0"],
            "embedding_cosine_spliced": full["embedding"]["cosine_sae"],
            "embedding_cosine_mlp_zero_ablated": full["embedding"]["cosine_zero"],
            "input_hook": sae.cfg.input_hook, "output_hook": sae.cfg.hook_name}
    xc_dir = train(hook_dir(cache, RESID[0]), out / "minilm_crosscoder", "crosscoder",
                   train_tokens, 1024, "--k", "32", "--expansion", "8",
                   pair=(hook_dir(cache, RESID[1]),))
    xc = saelab.load(xc_dir)
    held_xc = open_paired([hook_dir(held, h) for h in RESID])
    xc_rows = torch.from_numpy(held_xc.take(np.arange(held_xc.n_rows)))
    with torch.no_grad():
        per_layer = layer_explained_variance(xc, xc_rows)  # type: ignore[arg-type]
        norms = xc.layer_decoder_norms()  # type: ignore[operator]
    share = norms[:, 0] / norms.sum(1).clamp_min(1e-12)
    overall = cli("eval", xc_dir, "--data", hook_dir(held, RESID[0]), "--data-pair",
                  hook_dir(held, RESID[1]), "--no-plot", "--out", out / "minilm_crosscoder_eval.json")
    result["crosscoder"] = {"layers": RESID, "held_out_explained_variance_per_layer": per_layer,
                            "held_out_explained_variance": overall["explained_variance"],
                            "l0": overall["l0"],
                            "latents_writing_mostly_to_layer2": int((share > 0.7).sum()),
                            "latents_writing_mostly_to_layer3": int((share < 0.3).sum()),
                            "latents_shared": int(((share >= 0.3) & (share <= 0.7)).sum())}
    return result


def protein_part(out: Path, n_seqs: int, train_tokens: int) -> dict:
    model = build_tiny_esm(out / "tiny_esm", hidden=64, layers=4, heads=4)
    train_fa = write_toy_fasta(out / "train.fasta", n_seqs, seed=0)
    held_fa = write_toy_fasta(out / "held.fasta", n_seqs // 4, seed=1)
    result: dict = {"model": "tiny ESM-2-style (random weights, 4 layers, d=64)",
                    "sequences": n_seqs, "hook": "encoder.layer.2"}
    for fa, cache in ((train_fa, out / "esm_cache"), (held_fa, out / "esm_held")):
        made = cli("cache-proteins", "--model", model, "--hook", "encoder.layer.2", "--fasta", fa,
                   "--max-length", "128", "--out", cache)
        result.setdefault("cached_rows", []).append(made["caches"]["encoder.layer.2"]["rows"])
    for arch in ("topk", "ordered"):
        sae_dir = train(out / "esm_cache", out / f"esm_{arch}", arch, train_tokens, 512,
                        "--k", "16", "--expansion", "8")
        result[arch] = cli("eval", sae_dir, "--data", out / "esm_held", "--no-plot")
    return result


def vision_part(out: Path, n_images: int, train_tokens: int) -> dict:
    model = build_tiny_vit(out / "tiny_vit", kind="vit", image_size=32, patch_size=4, hidden=64,
                           layers=4, heads=4)
    result: dict = {"model": "tiny ViT (random weights, 4 layers, d=64, 8×8 patches of 4 px)",
                    "images": n_images, "hook": "layers.2", "tokens": "patch"}
    for n, seed, cache in ((n_images, 0, out / "vit_cache"), (n_images // 4, 1, out / "vit_held")):
        images = write_toy_images(out / f"images_{seed}", n, seed=seed)
        made = cli("cache-images", "--model", model, "--hook", "layers.2", "--images", images,
                   "--tokens", "patch", "--out", cache)
        result.setdefault("cached_rows", []).append(made["caches"]["layers.2"]["rows"])
    sae_dir = train(out / "vit_cache", out / "vit_topk", "topk", train_tokens, 512, "--k", "16",
                    "--expansion", "8")
    result["topk"] = cli("eval", sae_dir, "--data", out / "vit_held", "--no-plot")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/widen")
    p.add_argument("--tokens", type=int, default=30_000, help="MiniLM tokens cached for training")
    p.add_argument("--train-tokens", type=int, default=150_000)
    p.add_argument("--parts", default="minilm,protein,vision")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    start = time.perf_counter()
    if "protein" in args.parts:
        print("protein LM ...", flush=True)
        report["protein"] = protein_part(out, 400, 80_000)
    if "vision" in args.parts:
        print("vision ...", flush=True)
        report["vision"] = vision_part(out, 400, 80_000)
    if "minilm" in args.parts:
        print("MiniLM transcoders and crosscoder ...", flush=True)
        report["minilm"] = minilm_part(out, args.tokens, args.train_tokens)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "widen_demo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
