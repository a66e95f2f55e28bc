"""Open the activation source a training run's ``[data] path`` names: a file or a cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saelab.cache.format import is_cache_dir
from saelab.cache.source import CacheSource
from saelab.config import option
from saelab.data.arrays import ArrayFileSource
from saelab.data.base import DataError
from saelab.data.paired import PairedSource, open_paired


@dataclass
class DataConfig:
    """Where a training run's activations come from (the ``[data]`` table of a run file)."""

    path: str = option("", "activations: a .npy or .safetensors file (rows × width) or a `saelab cache` folder")
    key: str = option("", "tensor name inside a .safetensors file with several tensors")
    pair: list[str] = option([], "more activations read row by row with `path` and placed after "
                             "it: a transcoder's target, a crosscoder's further layers (caches "
                             "of one model pass, or arrays with the same rows)")
    shuffle: bool = option(True, "reshuffle rows every epoch")
    check_finite: bool = option(True, "scan the whole file for NaN/inf before training")


def open_source(data: DataConfig, seed: int) -> ArrayFileSource | CacheSource | PairedSource:
    """ArrayFileSource for a .npy/.safetensors file, CacheSource for an activation cache folder.

    For a cache, ``check_finite`` turns on the sha256 check of every shard (the cache writer
    already refused non-finite rows, so a checksum match means the rows are finite).
    """
    path = Path(data.path)
    if data.pair:
        return open_paired([path, *data.pair], seed=seed, shuffle=data.shuffle,
                           verify=data.check_finite)
    if path.is_dir():
        if not is_cache_dir(path):
            raise DataError(f"{path} is a folder but not an activation cache (no manifest.json); "
                            "pass a .npy/.safetensors file or a folder made by saelab cache")
        if data.key:
            raise DataError(f"data key {data.key!r} applies to .safetensors files, not to the "
                            f"cache folder {path}; remove it")
        return CacheSource(path, seed=seed, shuffle=data.shuffle, verify=data.check_finite)
    return ArrayFileSource(path, shuffle=data.shuffle, seed=seed, key=data.key or None,
                           check=data.check_finite)

