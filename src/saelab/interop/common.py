"""What both peer formats share: format detection, errors, bias folding."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from saelab.architectures.base import SAE

Format = Literal["saelens", "dictionary_learning"]


class InteropError(ValueError):
    """A peer-format folder cannot be read, or an SAE has no counterpart in the asked format."""


def detect_format(path: str | Path) -> Format | None:
    """``"saelens"`` for a folder with ``sae_weights.safetensors``, ``"dictionary_learning"`` for
    one with ``ae.pt``; None otherwise (a saelab folder, or not an SAE)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "sae_weights.safetensors").exists():
        return "saelens"
    if (path / "ae.pt").exists():
        return "dictionary_learning"
    return None


def read_foreign(path: str | Path, fmt: Format, device: str | torch.device = "cpu") -> SAE:
    """Load a peer-format folder as the equivalent saelab SAE (same codes and reconstruction)."""
    if fmt == "saelens":
        from saelab.interop.saelens import read_saelens

        return read_saelens(Path(path)).to(device)
    from saelab.interop.dictionary_learning import read_dictionary_learning

    return read_dictionary_learning(Path(path)).to(device)


def fold_input_bias(W_enc_DM: Tensor, b_enc_M: Tensor, b_dec_D: Tensor) -> Tensor:
    """b_enc' with x·W + b_enc = (x − b_dec)·W + b_enc' for every x: b_enc' = b_enc + b_dec·W.

    Peers can skip subtracting b_dec from the input (SAELens ``apply_b_dec_to_input = False``);
    saelab always subtracts it, so the subtraction is undone in the encoder bias, exactly.
    Computed in float64 so the fold adds no error beyond the final float32 rounding.
    """
    return (b_enc_M.double() + b_dec_D.double() @ W_enc_DM.double()).to(b_enc_M.dtype)


def target_name(sae: SAE, mapping: dict[str, str], no_counterpart: dict[str, str],
                fmt: str) -> str:
    """The peer-format name of ``sae``'s architecture, or InteropError saying why there is none."""
    if sae.name in no_counterpart:
        raise InteropError(f"a saelab {sae.name} has no {fmt} counterpart: "
                           f"{no_counterpart[sae.name]}; export it with --to saelab instead")
    if sae.name not in mapping:
        raise InteropError(f"no {fmt} mapping for architecture {sae.name!r}")
    return mapping[sae.name]


def float_state(sae: SAE) -> dict[str, Tensor]:
    """The SAE's tensors as contiguous float32 CPU tensors."""
    return {n: p.detach().float().contiguous().cpu() for n, p in sae.state_dict().items()}


def require_positive_threshold(sae: SAE, threshold: Tensor, fmt: str) -> Tensor:
    if bool((threshold < 0).any()):
        raise InteropError(f"{sae.name} SAE has no learned inference threshold yet (θ < 0: it "
                           f"was never trained past threshold_start_step), so {fmt} cannot "
                           "reproduce its codes; train it longer before exporting")
    return threshold
