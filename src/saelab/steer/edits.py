"""Latent edits: add α (i.e. α·d_j in activation space), clamp to a value, scale, or zero.

An edit acts on a code vector z (B × … × d_sae) and returns the edited copy z'. The activation
change it causes is decode(z') − decode(z) = (z' − z) · W_dec, so "add α to latent j" moves the
activation by exactly α·d_j (d_j the decoder row of j) whatever the latent's current value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saelab.config import ConfigError

EditOp = Literal["add", "clamp", "scale", "zero"]
EDIT_OPS: tuple[EditOp, ...] = ("add", "clamp", "scale", "zero")


@dataclass(frozen=True)
class LatentEdit:
    """One edit of one latent: ``add`` α, ``clamp`` to a value, ``scale`` by a factor, ``zero``."""

    latent: int
    op: EditOp = "add"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in EDIT_OPS:
            raise ConfigError(f"unknown edit {self.op!r}; choose one of {list(EDIT_OPS)}")
        if self.latent < 0:
            raise ConfigError(f"latent index must be >= 0, got {self.latent}")

    def describe(self) -> str:
        return f"{self.latent}:zero" if self.op == "zero" else f"{self.latent}:{self.op}:{self.value:g}"


def parse_edit(text: str) -> LatentEdit:
    """``"12:add:4"``, ``"12:clamp:0"``, ``"12:scale:2"``, ``"12:zero"`` (or ``"12=add:4"``)."""
    parts = text.replace("=", ":").split(":")
    try:
        latent = int(parts[0])
        op = parts[1] if len(parts) > 1 else ""
        if op == "zero" and len(parts) == 2:
            return LatentEdit(latent, "zero")
        if len(parts) != 3:
            raise ValueError
        return LatentEdit(latent, op, float(parts[2]))  # type: ignore[arg-type]
    except ValueError as err:
        raise ConfigError(f"bad edit {text!r}: write LATENT:add:ALPHA, LATENT:clamp:VALUE, "
                          "LATENT:scale:FACTOR or LATENT:zero, e.g. 12:add:4") from err


def check_latents(edits: Sequence[LatentEdit], d_sae: int, where: str = "the SAE") -> None:
    bad = [e.latent for e in edits if e.latent >= d_sae]
    if bad:
        raise ConfigError(f"latents {bad} do not exist: {where} has {d_sae} latents (0..{d_sae - 1})")


def apply_edits(codes: Tensor, edits: Sequence[LatentEdit]) -> Tensor:
    """A copy of ``codes`` with every edit applied in order along the last dimension."""
    out = codes.clone()
    for e in edits:
        column = out[..., e.latent]
        if e.op == "add":
            out[..., e.latent] = column + e.value
        elif e.op == "clamp":
            out[..., e.latent] = torch.full_like(column, e.value)
        elif e.op == "scale":
            out[..., e.latent] = column * e.value
        else:
            out[..., e.latent] = torch.zeros_like(column)
    return out


def edited_latents(edits: Sequence[LatentEdit]) -> list[int]:
    """The distinct latents the edits touch, in first-seen order."""
    return list(dict.fromkeys(e.latent for e in edits))
