"""Integrity of the files saelab writes: sha256 manifests, bounded reads, checked headers.

A saved SAE folder and every training checkpoint hold ``checksums.json``: the sha256 of each
file saelab wrote there. Loading and resuming verify it first, so a flipped bit or a hand-edited
``cfg.json`` / ``trainer.json`` is refused instead of silently giving different weights. Reads of
small metadata files are bounded, and safetensors headers are checked against the file size
before anything is allocated from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

CHECKSUMS = "checksums.json"
MAX_METADATA_BYTES = 1 << 20  # cfg.json, trainer.json, manifests: far below this
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20  # the safetensors library's own limit


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, corrupt or does not match its config."""


def sha256_file(path: Path, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def checksum_doc(folder: Path, names: list[str]) -> dict[str, Any]:
    return {"algorithm": "sha256", "files": {n: sha256_file(folder / n) for n in sorted(names)}}


def write_checksums(folder: str | Path, names: list[str] | None = None) -> None:
    """Record the sha256 of ``names`` (default: every other regular file) in checksums.json."""
    from saelab.io import atomic_write_json  # io builds on this module

    folder = Path(folder)
    if names is None:
        names = sorted(p.name for p in folder.iterdir()
                       if p.is_file() and p.name != CHECKSUMS and not p.name.startswith("."))
    atomic_write_json(folder / CHECKSUMS, checksum_doc(folder, names))


def verify_checksums(folder: str | Path, what: str, required: bool = True) -> bool:
    """Check every file listed in ``folder/checksums.json``; raise CheckpointError naming each
    missing or changed one. Returns False when there is no checksums file and it is optional."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.exists():
        if required:
            raise CheckpointError(f"{what} {folder} has no {CHECKSUMS}; it is incomplete or was "
                                  "not written by saelab")
        return False
    try:
        doc = json.loads(read_bounded(path))
        files = doc["files"]
        if doc.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("unknown layout")
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err})") from err
    bad = []
    for name, digest in sorted(files.items()):
        target = folder / name
        if Path(name).name != name or not target.is_file() or sha256_file(target) != digest:
            bad.append(name)
    if bad:
        raise CheckpointError(f"{what} {folder}: {', '.join(bad)} failed the sha256 check "
                              "(corrupt or edited after saving)")
    return True


def read_bounded(path: Path, limit: int = MAX_METADATA_BYTES) -> str:
    """The text of a small regular file; refuses devices, FIFOs and files over ``limit``."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"{path} is larger than {limit} bytes; it is not a saelab "
                              "metadata file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text ({err}); the file is corrupt") from err


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts.

    The 8-byte length is checked against the file size first, so a pickle or random bytes
    under a .safetensors name give a clear error instead of a huge allocation.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_SAFETENSORS_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"{path} is not a safetensors file (its header length {n} does not "
                             f"fit the file's {size} bytes); it may be a pickle or corrupt")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not a JSON object)")
    data_bytes = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: tensor {key!r} has a malformed header entry") from err
        if not 0 <= start <= end <= data_bytes or any(s < 0 for s in shape):
            raise ValueError(f"{path}: tensor {key!r} lies outside the file; it is truncated "
                             "or corrupt")
    return header, 8 + n


def save_tensors(tensors: dict[str, Any], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (disk full, read-only, ...) raised as the
    OSError they are rather than a SafetensorError, so callers report them as such."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))
    except SafetensorError as err:
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err
    os.chmod(path, 0o666 & ~current_umask())  # safetensors creates 0600 files


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
