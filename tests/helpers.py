"""Shared test helpers: small configs for every architecture."""

from __future__ import annotations

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
