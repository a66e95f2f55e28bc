"""Model and hook names a data source knows, for the SAE's metadata."""

from __future__ import annotations

import dataclasses

from saelab.architectures.base import SAEConfig
from saelab.cache.source import CacheSource
from saelab.data.paired import PairedSource


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
        if "n_layers" in names and not getattr(cfg, "n_layers", 0):
            fill["n_layers"] = len(source.members)
    updates = {k: v for k, v in fill.items() if v and not getattr(cfg, k)}
    return dataclasses.replace(cfg, **updates) if updates else cfg  # type: ignore[arg-type]
