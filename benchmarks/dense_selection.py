"""Microbenchmark: the dense reference path's TopK / BatchTopK selection (``sparse_kernels =
false``) under saelab's tie rule vs a bare ``torch.topk``.

Prints JSON: seconds per selection (median and min of ``--repeats``, old and new alternating in
one process, after a warm-up) on random fp32 pre-activations (B × M, default 4096 × 16384, k 32):
``torch_topk`` is the former code (``torch.topk`` of the ReLU'd flattened batch, or of each
row), ``tie_rule`` the current ``batch_topk_codes`` / ``topk_codes`` (``kernels.ordered_topk``).
``*_tied`` times the same with a tie planted at the cut (the rule's slower path; real fp32 data
has one now and then). Codes are built in both, so the figures are whole selections.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dense_selection.py   # ~1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from saelab.architectures.batchtopk import batch_topk_codes
from saelab.architectures.topk import topk_codes


def old_batch_topk_codes(pre_BM: Tensor, k: float) -> Tensor:
    flat = torch.relu(pre_BM).flatten()
    vals, idx = flat.topk(min(flat.numel(), max(1, round(k * pre_BM.shape[0]))), sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre_BM)


def old_topk_codes(pre_BM: Tensor, k: int) -> Tensor:
    vals, idx = pre_BM.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BM).scatter(-1, idx, torch.relu(vals))


def plant_ties(pre_BM: Tensor, k: int, batch: bool) -> Tensor:
    """A copy where the value at the cut also sits below the cut elsewhere (in each row, for the
    per-row case): the k-th and (k+1)-th largest are equal."""
    out = pre_BM.clone()
    if batch:
        flat = out.view(-1)
        idx = flat.topk(k * out.shape[0] + 1).indices
        flat[idx[-1]] = flat[idx[-2]]
    else:
        idx = out.topk(k + 1, dim=1).indices
        out.scatter_(1, idx[:, -1:], out.gather(1, idx[:, -2:-1]))
    return out


def compare(fns: dict[str, Callable[[], Tensor]], repeats: int) -> dict[str, dict[str, float]]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"s": round(statistics.median(t), 4), "min": round(min(t), 4)}
            for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pre = torch.randn(args.batch, args.m, generator=torch.Generator().manual_seed(0))
    k = args.k
    out: dict[str, object] = {"batch": args.batch, "m": args.m, "k": k,
                              "threads": torch.get_num_threads()}
    for name, data in (("untied", pre), ("tied", None)):
        batch_pre = plant_ties(pre, k, batch=True) if data is None else data
        row_pre = plant_ties(pre, k, batch=False) if data is None else data
        if data is not None:  # no tie to break: both select the same set
            assert torch.equal(batch_topk_codes(data, k), old_batch_topk_codes(data, k))
        out[f"batch_topk_{name}"] = compare({
            "torch_topk": lambda p=batch_pre: old_batch_topk_codes(p, k),
            "tie_rule": lambda p=batch_pre: batch_topk_codes(p, k)}, args.repeats)
        out[f"topk_{name}"] = compare({
            "torch_topk": lambda p=row_pre: old_topk_codes(p, k),
            "tie_rule": lambda p=row_pre: topk_codes(p, k)}, args.repeats)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
