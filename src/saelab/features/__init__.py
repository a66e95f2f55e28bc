"""The feature store: per-latent statistics, top and quantile-sampled contexts, logit effects,
decoder neighbours and board-game labels of an SAE over real activations, in one SQLite file.

``build_store`` streams rows from an activation cache or a model run (:mod:`.sources`) through
the SAE with bounded memory (:mod:`.collect`), resumably, and writes the store atomically;
:class:`FeatureStore` reads it. Schema and choices: docs/features.md.
"""

from saelab.features.build import (
    BuildResult,
    FeatureBuildConfig,
    StoreError,
    build_store,
    read_meta,
    store_path,
)
from saelab.features.schema import SCHEMA_VERSION, STORE_NAME, fingerprint
from saelab.features.sources import (
    CacheRows,
    LoadedSpec,
    ModelRows,
    ModelSpec,
    TokenCodec,
    load_model,
)
from saelab.features.store import SORT_KEYS, FeatureStore, resolve_store

__all__ = ["SCHEMA_VERSION", "SORT_KEYS", "STORE_NAME", "BuildResult", "CacheRows",
           "FeatureBuildConfig", "FeatureStore", "LoadedSpec", "ModelRows", "ModelSpec",
           "StoreError", "TokenCodec", "build_store", "fingerprint", "load_model", "read_meta",
           "resolve_store", "store_path"]
