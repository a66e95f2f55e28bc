"""Saving and loading SAEs: a folder with ``cfg.json``, ``sae.safetensors`` and
``checksums.json`` (sha256 of both, see :mod:`saelab.integrity`).

Writes are atomic (write to a temporary sibling, fsync, rename) so a crash never leaves a
half-written file where a good one was. Saving into an existing folder replaces only those three
files: anything else there (an evaluation's JSON and plots) is kept.
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
from safetensors.torch import load_file

from saelab.architectures.base import SAE
from saelab.config import ConfigError, to_dict
from saelab.integrity import (
    CHECKSUMS,
    CheckpointError,
    current_umask,
    read_bounded,
    safetensors_header,
    save_tensors,
    verify_checksums,
    write_checksums,
)
from saelab.registry import build, config_from_dict

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
SAE_FILES = (CFG_NAME, WEIGHTS_NAME, CHECKSUMS)
#: 2 adds checksums.json; version 1 folders (no checksums) still load.
FORMAT_VERSION = 2

__all__ = ["CFG_NAME", "FORMAT_VERSION", "SAE_FILES", "WEIGHTS_NAME", "CheckpointError",
           "atomic_write_bytes", "atomic_write_dir", "atomic_write_json", "load", "read_config",
           "refuse_sae_files", "save"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 files; give the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def make_temp_dir(parent: Path, name: str) -> Path:
    """A temporary sibling folder ``.<name>.XXXX.tmp`` with the usual (umask) mode, not 0700."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def atomic_write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with ``fill(tmp_dir)`` then move it into place in one rename."""
    path = Path(path)
    tmp = make_temp_dir(path.parent, path.name)
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
    """Write cfg.json, sae.safetensors and checksums.json into an existing folder (not atomic
    by itself)."""
    save_tensors(_state_tensors(sae), folder / WEIGHTS_NAME)
    (folder / CFG_NAME).write_text(json.dumps(sae_config_dict(sae), indent=2, sort_keys=True) + "\n")
    write_checksums(folder, [CFG_NAME, WEIGHTS_NAME])


def save(sae: SAE, path: str | Path) -> Path:
    """Save an SAE to folder ``path``; returns the path.

    Each file is written to a temporary folder next to it and renamed into place, checksums
    last; other files already in the folder are left alone.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot save an SAE to {path}: it is a file, not a folder")
    if not path.exists():
        atomic_write_dir(path, lambda tmp: write_sae_files(sae, tmp))
        return path
    tmp = make_temp_dir(path, "saving")
    try:
        write_sae_files(sae, tmp)
        for name in SAE_FILES:  # checksums.json last: it vouches for the two before it
            os.replace(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
        data = json.loads(read_bounded(cfg_path))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({err}); the file is corrupt") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object")
    return data


# Readers of other libraries' SAE folders, tried in order by :func:`load`; each returns None for
# a folder it does not recognise. Formats live above io (saelab.interop registers its readers),
# so io stays at the bottom of the import graph.
ForeignReader = Callable[[Path, "str | torch.device"], "SAE | None"]
FOREIGN_READERS: list[ForeignReader] = []


def register_foreign_reader(reader: ForeignReader) -> None:
    """Let :func:`load` open another library's SAE folders (see saelab.interop)."""
    if reader not in FOREIGN_READERS:
        FOREIGN_READERS.append(reader)


def load(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Rebuild the exact SAE class and weights saved in folder ``path``.

    Verifies checksums.json (required from format version 2), checks the config's sizes against
    the weights' header before allocating anything, then loads.
    SAELens and dictionary_learning folders load too (see :mod:`saelab.interop`).
    """
    path = Path(path)
    for reader in FOREIGN_READERS:
        if (foreign := reader(path, device)) is not None:
            return foreign
    data = read_config(path)
    version = data.pop("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path / CFG_NAME} has format_version {version!r}; this saelab "
                              f"reads versions 1..{FORMAT_VERSION} (upgrade saelab?)")
    weights_path = path / WEIGHTS_NAME
    if not weights_path.exists():
        raise CheckpointError(f"{path} has {CFG_NAME} but no {WEIGHTS_NAME}")
    verify_checksums(path, "saved SAE", required=version >= 2)
    try:
        cfg = config_from_dict(data, where=str(path / CFG_NAME))
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    try:
        header, _ = safetensors_header(weights_path)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path} could not be read ({err}); the file is corrupt") from err
    check_header_shapes(header, cfg, str(weights_path), str(data["architecture"]))
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path} could not be read ({err}); the file is corrupt") from err
    sae = build(cfg)
    load_state_checked(sae, tensors, str(weights_path))
    return sae.to(device)


def check_header_shapes(header: dict[str, Any], cfg: Any, where: str, arch: str) -> None:
    """Every tensor the architecture holds must be in the file with the shape cfg gives it.

    Checked before the SAE is built for real: the skeleton is built on the meta device, which
    allocates nothing, so a cfg.json with d_sae = 1e9 cannot make saelab allocate it. Each
    architecture's own shapes are used (a transcoder's W_dec is d_sae × d_out, not × d_in).
    """
    with torch.device("meta"):
        skeleton = build(cfg)
    expected = {name: list(t.shape) for name, t in skeleton.state_dict().items()}
    missing = sorted(name for name in expected if name not in header)
    if missing:
        raise CheckpointError(f"{where} does not match architecture {arch!r}: missing "
                              f"tensors {missing}")
    wrong = [f"tensor {name!r} has shape {tuple(header[name]['shape'])} but the config "
             f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {tuple(shape)}"
             for name, shape in expected.items() if list(header[name]["shape"]) != shape]
    if wrong:
        raise CheckpointError(f"{where}: " + "; ".join(wrong))


def refuse_sae_files(path: Path, flag: str = "--out") -> None:
    """Raise ConfigError if writing ``path`` would overwrite a saved SAE's own files."""
    path = Path(path)
    if path.name in SAE_FILES and (path.parent / CFG_NAME).exists():
        raise ConfigError(f"{flag} {path} would overwrite the SAE's own {path.name}; write the "
                          "results to another file name")


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
