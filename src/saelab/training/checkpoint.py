"""Resumable training checkpoints: weights, optimiser state, dead-latent counters, RNG, step.

Layout: ``<out>/checkpoints/step_<N>/`` holding ``trainer.json``, ``rng.safetensors``, per SAE
``<name>.sae``, ``<name>.optim`` and ``<name>.track`` safetensors files, and ``checksums.json``
(sha256 of every other file). Each checkpoint folder appears in one atomic rename, so the newest
folder is always complete; reading verifies every checksum and that the weights are finite.
Nothing is pickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab.architectures.base import SAE
from saelab.integrity import (
    CheckpointError,
    read_bounded,
    save_tensors,
    verify_checksums,
    write_checksums,
)
from saelab.io import atomic_write_dir, load_state_checked

STATE_FILE = "trainer.json"
#: 2 adds checksums.json and format_version; version 1 checkpoints (no checksums) still resume.
CHECKPOINT_FORMAT_VERSION = 2


@dataclass
class SlotState:
    """Per-SAE training state besides the module's own parameters and buffers."""

    optimizer: torch.optim.Optimizer
    tokens_since_fired_M: torch.Tensor


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[Any]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{pid}.{key}"] = t.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        groups: list[Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def write_checkpoint(
    root: Path, step: int, meta: dict[str, Any], saes: dict[str, SAE], slots: dict[str, SlotState],
    keep: int,
) -> Path:
    path = root / f"step_{step:09d}"

    def fill(tmp: Path) -> None:
        groups = {}
        for name, sae in saes.items():
            save_tensors({k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()},
                         tmp / f"{name}.sae.safetensors")
            flat, groups[name] = optimizer_to_flat(slots[name].optimizer)
            save_tensors(flat, tmp / f"{name}.optim.safetensors")
            save_tensors({"tokens_since_fired": slots[name].tokens_since_fired_M.contiguous()},
                         tmp / f"{name}.track.safetensors")
        save_tensors({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
        doc = {**meta, "step": step, "optimizer_param_groups": groups,
               "format_version": CHECKPOINT_FORMAT_VERSION}
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
        write_checksums(tmp)

    atomic_write_dir(path, fill)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).exists())


def set_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint to ``corrupt_<name>`` (kept for inspection, never resumed)."""
    target = path.with_name(f"corrupt_{path.name}")
    n = 1
    while target.exists():
        target = path.with_name(f"corrupt_{path.name}.{n}")
        n += 1
    path.rename(target)
    return target


def read_checkpoint(
    path: Path, saes: dict[str, SAE], slots: dict[str, SlotState]
) -> dict[str, Any]:
    """Verify, then restore weights and optimiser state in place; returns the trainer metadata.

    Raises CheckpointError when a file is missing, fails its checksum, or the weights are not
    finite (a checkpoint is never "good" just because it exists)."""
    try:
        meta = json.loads(read_bounded(path / STATE_FILE))
        if not isinstance(meta, dict):
            raise ValueError(f"{STATE_FILE} does not hold a JSON object")
        version = meta.get("format_version", 1)
        if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format_version {version!r}; this saelab "
                                  f"reads versions 1..{CHECKPOINT_FORMAT_VERSION}")
        verify_checksums(path, "checkpoint", required=version >= 2)
        for name, sae in saes.items():
            sae_file = path / f"{name}.sae.safetensors"
            if not sae_file.exists():
                raise CheckpointError(f"checkpoint {path} has no weights for SAE {name!r}; "
                                      "the run's SAE list changed since it was written")
            tensors = load_file(str(sae_file))
            # Parameters only: buffers may hold NaN on purpose (auto-L0's empty history slots).
            params = {k for k, _ in sae.named_parameters()}
            nonfinite = sorted(k for k, t in tensors.items() if k in params
                               and t.is_floating_point() and not bool(torch.isfinite(t).all()))
            if nonfinite:
                raise CheckpointError(f"checkpoint {path} holds non-finite weights {nonfinite} "
                                      f"for SAE {name!r}")
            load_state_checked(sae, tensors, str(sae_file))
            optimizer_from_flat(slots[name].optimizer,
                                load_file(str(path / f"{name}.optim.safetensors")),
                                meta["optimizer_param_groups"][name])
            track = load_file(str(path / f"{name}.track.safetensors"))
            slots[name].tokens_since_fired_M.copy_(track["tokens_since_fired"])
        torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({err}); delete it to resume "
                              "from the previous one") from err
    return meta
