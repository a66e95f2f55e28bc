"""Fingerprints of activation data, so a resumed run notices data that changed under it.

A fingerprint is a small JSON-ready dict. For a file: its size and a sha256 over the whole file
when it is small, or over the first and last block plus evenly spaced sampled blocks when it is
large (a change anywhere in a sampled block, or any change of size, is caught; mtime is left
out on purpose, so copying or touching the file does not block a resume). An activation cache
is fingerprinted by the sha256 checksums its manifest already holds for every shard.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

FULL_HASH_BYTES = 64 << 20
SAMPLE_BLOCKS = 256
BLOCK_BYTES = 64 << 10


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            while block := fh.read(8 << 20):
                digest.update(block)
            method = "sha256"
        else:
            step = (size - BLOCK_BYTES) // (SAMPLE_BLOCKS - 1)
            for i in range(SAMPLE_BLOCKS):
                fh.seek(i * step)
                digest.update(fh.read(BLOCK_BYTES))
            fh.seek(size - BLOCK_BYTES)
            digest.update(fh.read(BLOCK_BYTES))
            method = f"sha256 of {SAMPLE_BLOCKS + 1} blocks of {BLOCK_BYTES} bytes"
    return {"kind": "file", "size": size, "method": method, "digest": digest.hexdigest()}


def describe_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)
