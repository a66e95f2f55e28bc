"""Per-latent attribution of a SARM's preference between two sequences.

The reward is r = Σ_j w_j·z_j, so the reward difference of a pair splits exactly over latents:
r_c − r_r = Σ_j w_j·(z_j^c − z_j^r). :func:`explain_pair` lists the latents with the largest
|w_j·(z_j^c − z_j^r)|.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saelab.sarm.model import SARM


@dataclass
class LatentContribution:
    latent: int
    weight: float  # w_j
    z_chosen: float
    z_rejected: float
    contribution: float  # w_j·(z_j^c − z_j^r)
    label: str = ""


@dataclass
class PairExplanation:
    reward_chosen: float
    reward_rejected: float
    top: list[LatentContribution]
    share_of_top: float  # Σ top contributions / (r_c − r_r)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def explain_acts(sarm: SARM, h_chosen_D: Tensor, h_rejected_D: Tensor, top: int = 10,
                 labels: dict[int, str] | None = None) -> PairExplanation:
    """Attribution of the reward difference between two last-token activations."""
    z_c = sarm.latents(h_chosen_D[None])[0]
    z_r = sarm.latents(h_rejected_D[None])[0]
    w = sarm.head.weight[0]
    diff = w * (z_c - z_r)
    order = diff.abs().argsort(descending=True)[:top]
    r_c, r_r = float(w @ z_c), float(w @ z_r)
    items = [LatentContribution(int(j), float(w[j]), float(z_c[j]), float(z_r[j]),
                                float(diff[j]), (labels or {}).get(int(j), ""))
             for j in order]
    gap = r_c - r_r
    share = float(diff[order].sum()) / gap if gap else float("nan")
    return PairExplanation(r_c, r_r, items, share)


@torch.no_grad()
def explain_tokens(sarm: SARM, chosen_ids: Tensor, chosen_mask: Tensor, rejected_ids: Tensor,
                   rejected_mask: Tensor, top: int = 10,
                   labels: dict[int, str] | None = None) -> PairExplanation:
    """Attribution for one tokenised pair (each ``(1, S)``)."""
    h_c = sarm.last_acts(chosen_ids, chosen_mask)[0]
    h_r = sarm.last_acts(rejected_ids, rejected_mask)[0]
    return explain_acts(sarm, h_c, h_r, top, labels)


def format_explanation(exp: PairExplanation) -> str:
    lines = [f"reward chosen {exp.reward_chosen:+.4f}  rejected {exp.reward_rejected:+.4f}  "
             f"difference {exp.reward_chosen - exp.reward_rejected:+.4f}",
             f"{'latent':>7} {'w_j':>9} {'z_chosen':>9} {'z_rejected':>10} "
             f"{'w_j·Δz_j':>9}  label"]
    for c in exp.top:
        lines.append(f"{c.latent:>7} {c.weight:>9.4f} {c.z_chosen:>9.4f} {c.z_rejected:>10.4f} "
                     f"{c.contribution:>+9.4f}  {c.label}")
    lines.append(f"these {len(exp.top)} latents carry {exp.share_of_top:.1%} of the difference")
    return "\n".join(lines)
