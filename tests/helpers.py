"""Shared test helpers: small configs for every architecture; loading a benchmark script."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from saelab.architectures.base import SAE, StepContext
from saelab.registry import architectures, build, config_from_dict

TOPK_LIKE = {"topk", "batchtopk", "matryoshka", "ordered", "crosscoder"}
PAIRED = {"transcoder"}  # rows are [input | target]


def small_options(name: str, d_in: int = 16, d_sae: int = 48) -> dict[str, Any]:
    opts: dict[str, Any] = {"architecture": name, "d_in": d_in, "d_sae": d_sae}
    if name in TOPK_LIKE:
        opts["k"] = 4
    if name in ("batchtopk", "matryoshka"):
        opts["threshold_start_step"] = 0
    if name in PAIRED:
        opts.update(k=4, d_out=d_in)
    if name == "crosscoder":
        opts.update(k=4, n_layers=2)
    return opts


def small_sae(name: str, d_in: int = 16, d_sae: int = 48, seed: int = 0) -> SAE:
    sae = build(config_from_dict(small_options(name, d_in, d_sae)).resolved())
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 2))
    return sae


def all_names() -> list[str]:
    return sorted(architectures())


def ctx(step: int = 5, total: int = 100, dead: torch.Tensor | None = None) -> StepContext:
    return StepContext(step=step, total_steps=total, dead_mask_M=dead)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
