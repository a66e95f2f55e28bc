"""The on-disk format of an activation cache: shards, token ids and ``manifest.json``.

A finished cache folder holds::

    manifest.json        what is in the cache (model, hook, dtype, width, rows, checksums)
    acts_00000.npy ...   activation rows (rows × width, float32 or float16), shuffled
    index_00000.npy ...  for each row of the matching acts shard: (sequence, position), int64
    tokens.npy           token ids of every context (n_contexts × context_size, int32)

Row r of the cache is row r of the shards concatenated in order. ``index[r] = (s, p)`` means
the activation was read at position p of context s, whose tokens are ``tokens[s]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saelab.data.base import DataError
from saelab.integrity import sha256_file

FORMAT_NAME = "saelab-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
TOKENS = "tokens.npy"
WORK_DIR = "_work"
DTYPES = ("float32", "float16")


class CacheError(DataError):
    """An activation cache is unfinished, corrupt, or does not match what was asked for."""


@dataclass
class ShardInfo:
    """One shard: its two files, row count and checksums."""

    acts_file: str
    index_file: str
    rows: int
    acts_sha256: str
    index_sha256: str


@dataclass
class CacheManifest:
    """Everything a reader needs to trust and interpret a cache."""

    model: str
    hook: str
    dtype: str
    width: int
    n_rows: int
    n_contexts: int
    context_size: int
    tokenizer: str
    seed: int
    shards: list[ShardInfo]
    tokens_sha256: str
    tokens_file: str = TOKENS
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    info: dict[str, Any] = field(default_factory=dict)  # text settings, sources, timings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> CacheManifest:
        if data.get("format") != FORMAT_NAME:
            raise CacheError(f"{where} is not a saelab activation cache manifest")
        if data.get("version") != FORMAT_VERSION:
            raise CacheError(f"{where} has cache format version {data.get('version')}; this "
                             f"saelab reads version {FORMAT_VERSION}")
        try:
            shards = [ShardInfo(**s) for s in data["shards"]]
            manifest = cls(**{**data, "shards": shards})
        except (KeyError, TypeError) as err:
            raise CacheError(f"{where} is missing or has unexpected fields ({err}); the "
                             "manifest is corrupt") from err
        names = [manifest.tokens_file] + [n for s in shards for n in (s.acts_file, s.index_file)]
        outside = [n for n in names if not _plain_file_name(n)]
        if outside:
            raise CacheError(f"{where} names files outside the cache folder {outside}; a cache "
                             "manifest may only name files in its own folder")
        return manifest


def _plain_file_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name)


def is_cache_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a cache manifest or an unfinished cache."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).exists() or (path / PROGRESS).exists())


def read_manifest(folder: str | Path) -> CacheManifest:
    """The manifest of a finished cache; unfinished or foreign folders raise CacheError."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        if (folder / PROGRESS).exists():
            raise CacheError(f"{folder} is an unfinished cache (no {MANIFEST} yet); rerun the same "
                             "saelab cache command to resume and finish it")
        raise CacheError(f"{folder} has no {MANIFEST}; is it an activation cache folder?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path} is not valid JSON ({err}); the manifest is corrupt") from err
    return CacheManifest.from_dict(data, str(path))


def check_shapes(folder: Path, manifest: CacheManifest) -> None:
    """Cheap structural check of every file (headers only); raises CacheError naming the file."""
    for shard in manifest.shards:
        _check_npy(folder / shard.acts_file, (shard.rows, manifest.width), manifest.dtype)
        _check_npy(folder / shard.index_file, (shard.rows, 2), "int64")
    _check_npy(folder / manifest.tokens_file, (manifest.n_contexts, manifest.context_size), "int32")
    total = sum(s.rows for s in manifest.shards)
    if total != manifest.n_rows:
        raise CacheError(f"{folder / MANIFEST}: shards hold {total} rows but the manifest says "
                         f"{manifest.n_rows}; the manifest is corrupt")


def _check_npy(path: Path, shape: tuple[int, int], dtype: str) -> None:
    if not path.exists():
        raise CacheError(f"cache file {path} is missing; the cache is incomplete — rebuild it")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise CacheError(f"cache file {path} is not a readable .npy file ({err}); it is "
                         "corrupt — rebuild the cache") from err
    if arr.shape != shape or arr.dtype != np.dtype(dtype):
        raise CacheError(f"cache file {path} holds {arr.dtype} {arr.shape}, the manifest says "
                         f"{dtype} {shape}; it is corrupt — rebuild the cache")


def verify_checksums(folder: str | Path, manifest: CacheManifest | None = None) -> None:
    """Hash every file and raise CacheError naming each one whose sha256 does not match."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    expected = [(manifest.tokens_file, manifest.tokens_sha256)]
    for shard in manifest.shards:
        expected += [(shard.acts_file, shard.acts_sha256), (shard.index_file, shard.index_sha256)]
    bad = [name for name, digest in expected
           if not (folder / name).exists() or sha256_file(folder / name) != digest]
    if bad:
        raise CacheError(f"cache {folder}: {len(bad)} file(s) failed the sha256 check: "
                         f"{', '.join(bad)}; the data is corrupt — rebuild the cache (or restore "
                         "those files) before training on it")
