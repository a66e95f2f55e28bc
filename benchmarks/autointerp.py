"""Explain-and-score throughput against a chat-completions server with a fixed delay; prints
one JSON object.

A real HTTP server on 127.0.0.1 (``python -m saelab.interp.loopback``, in its own process, as
a real server would be) answers every request after ``--delay`` seconds with the scripted
keyword "LLM", so the numbers measure saelab's client, pipeline and HTTP stack, not a model. For each concurrency (``--concurrency``, default 1 8 32)
the pipeline explains and scores ``--latents-per-slot`` × concurrency synthetic latents (at
least ``--min-latents``) with the LLM explainer and the detection and fuzzing scorers, cache
off. Per run: latents/min, requests/s, the most requests the server saw in flight, and
``ideal_latents_per_min`` = 60·min(c, slots)/(requests per latent · delay), the rate of a
client that keeps min(c, slots) requests busy at all times; ``efficiency`` = measured/ideal.
``--server-slots K`` makes the server work on at most K requests at once (the rest queue),
to show where a saturated server flattens the curve.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/autointerp.py
    python benchmarks/autointerp.py --delay 0.2 --server-slots 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from saelab.interp import (
    DetectionScorer,
    FuzzingScorer,
    LLMClient,
    LLMConfig,
    LLMExplainer,
    Pipeline,
)
from saelab.interp.examples import synthetic_examples


class _NullSink:
    def read(self, latent: int) -> None:
        return None

    def write(self, latent: int, record: dict, transcript: dict | None) -> None:
        pass


@contextlib.contextmanager
def server_process(delay: float, slots: int) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "saelab.interp.loopback", "--delay",
                             str(delay), "--slots", str(slots)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/_stats", timeout=30) as response:
        return json.loads(response.read())


def measure(concurrency: int, n_latents: int, delay: float, slots: int) -> dict:
    examples = [synthetic_examples(i, seed=concurrency) for i in range(n_latents)]
    with server_process(delay, slots) as url:
        client = LLMClient(LLMConfig(base_url=url, model="loopback",
                                     max_concurrency=concurrency, timeout_s=120.0))
        pipeline = Pipeline(LLMExplainer(client), [DetectionScorer(client), FuzzingScorer(client)],
                            _NullSink(), client=client, max_latents=max(4, 2 * concurrency),
                            progress=False)
        start = time.perf_counter()
        summary = pipeline.run(examples)
        seconds = time.perf_counter() - start
        served = stats(url)
        requests, max_in_flight = served["requests"], served["max_in_flight"]
    per_latent = requests / n_latents
    busy = min(concurrency, slots) if slots > 0 else concurrency
    ideal = 60 * busy / (per_latent * delay)
    rate = 60 * n_latents / seconds
    return {"concurrency": concurrency, "latents": n_latents, "seconds": round(seconds, 2),
            "requests": requests, "requests_per_latent": round(per_latent, 2),
            "latents_per_min": round(rate, 1), "requests_per_s": round(requests / seconds, 1),
            "max_in_flight": max_in_flight, "ideal_latents_per_min": round(ideal, 1),
            "efficiency": round(rate / ideal, 3), "failures": summary.failures,
            "mean_detection": summary.mean_scores.get("detection")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--delay", type=float, default=0.1, help="seconds per request")
    ap.add_argument("--latents-per-slot", type=int, default=3)
    ap.add_argument("--min-latents", type=int, default=6)
    ap.add_argument("--server-slots", type=int, default=0, help="0 = unlimited")
    args = ap.parse_args()
    import openai  # noqa: F401  (imported once up front, not inside the first timed run)
    runs = [measure(c, max(args.min_latents, args.latents_per_slot * c), args.delay,
                    args.server_slots) for c in args.concurrency]
    base = runs[0]["latents_per_min"] / runs[0]["concurrency"]
    for r in runs:
        r["speedup_vs_first"] = round(r["latents_per_min"] / runs[0]["latents_per_min"], 2)
        r["scaling_efficiency"] = round(r["latents_per_min"] / (base * r["concurrency"]), 3)
    print(json.dumps({"benchmark": "autointerp", "delay_s": args.delay,
                      "server_slots": args.server_slots, "scorers": ["detection", "fuzzing"],
                      "machine": platform.platform(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
