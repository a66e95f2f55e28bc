"""Saving and loading SAEs: a folder with ``cfg.json`` and ``sae.safetensors``.

Writes are atomic (write to a temporary sibling, fsync, rename) so a crash never leaves a
half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saelab.architectures.base import SAE
from saelab.config import ConfigError, to_dict
from saelab.registry import build, config_from_dict

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, corrupt or does not match its config."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with ``fill(tmp_dir)`` then move it into place in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sae_config_dict(sae: SAE) -> dict[str, Any]:
    return {"architecture": sae.name, "format_version": FORMAT_VERSION, **to_dict(sae.cfg)}


def _state_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}


def write_sae_files(sae: SAE, folder: Path) -> None:
    """Write cfg.json and sae.safetensors into an existing folder (not atomic by itself)."""
    save_file(_state_tensors(sae), str(folder / WEIGHTS_NAME))
    (folder / CFG_NAME).write_text(json.dumps(sae_config_dict(sae), indent=2, sort_keys=True) + "\n")


def save(sae: SAE, path: str | Path) -> Path:
    """Save an SAE to folder ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_dir(path, lambda tmp: write_sae_files(sae, tmp))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    cfg_path = path / CFG_NAME
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; an SAE checkpoint is a folder with "
                              f"{CFG_NAME} and {WEIGHTS_NAME}")
    if not cfg_path.exists():
        raise CheckpointError(f"{path} has no {CFG_NAME}; is this an SAE checkpoint folder?")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({err}); the file is corrupt") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object")
    return data


def load(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Rebuild the exact SAE class and weights saved in folder ``path``.

    SAELens and dictionary_learning folders load too (see :mod:`saelab.interop`).
    """
    path = Path(path)
    from saelab.interop.common import detect_format, read_foreign  # interop builds on io

    if (fmt := detect_format(path)) is not None:
        return read_foreign(path, fmt, device)
    data = read_config(path)
    data.pop("format_version", None)
    try:
        cfg = config_from_dict(data, where=str(path / CFG_NAME))
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    weights_path = path / WEIGHTS_NAME
    if not weights_path.exists():
        raise CheckpointError(f"{path} has {CFG_NAME} but no {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path} could not be read ({err}); the file is corrupt") from err
    sae = build(cfg)
    load_state_checked(sae, tensors, str(weights_path))
    return sae.to(device)


def load_state_checked(sae: SAE, tensors: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict with errors that name the missing, unexpected or mis-shaped tensors."""
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not match architecture {sae.name!r}: missing tensors {missing}, "
            f"unexpected tensors {unexpected}"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)} but the config "
                f"(d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}) needs {tuple(expected[name].shape)}"
            )
    sae.load_state_dict(tensors)
