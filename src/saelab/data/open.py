"""Open the activation source a training run's ``[data] path`` names: a file or a cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from saelab.architectures.base import SAEConfig
from saelab.cache.format import is_cache_dir
from saelab.cache.source import CacheSource
from saelab.data.arrays import ArrayFileSource
from saelab.data.base import DataError
from saelab.data.paired import PairedSource, open_paired
from saelab.run_config import DataConfig


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


def with_source_metadata(cfg: SAEConfig, source: object) -> SAEConfig:
    """``cfg`` with the model and hook names the source knows filled in where left empty.

    A cache records its model and hook; a paired source its members' hooks (a transcoder's
    input and target, a crosscoder's layers). Exported SAEs carry these names (SAELens's
    ``metadata.model_name`` / ``hook_name``).
    """
    fill: dict[str, object] = {}
    if isinstance(source, CacheSource):
        fill = {"model_name": source.manifest.model, "hook_name": source.manifest.hook}
    elif isinstance(source, PairedSource):
        first = source.members[0]
        model = first.manifest.model if isinstance(first, CacheSource) else ""
        hooks = source.hooks
        fill = {"model_name": model, "hook_name": hooks[-1] if hooks[-1] else ""}
        names = {f.name for f in dataclasses.fields(cfg)}
        if "input_hook" in names:
            fill["input_hook"] = hooks[0]
        if "layer_hooks" in names:
            fill["layer_hooks"] = hooks if all(hooks) else []
            fill["hook_name"] = hooks[0]
        if "n_layers" in names and not getattr(cfg, "n_layers"):
            fill["n_layers"] = len(source.members)
    updates = {k: v for k, v in fill.items() if v and not getattr(cfg, k)}
    return dataclasses.replace(cfg, **updates) if updates else cfg
