"""Activation caches on disk: sharded, uniformly shuffled, checksummed, resumable, mmap-read."""

from saelab.cache.build import CacheBuildResult, CacheConfig, build_cache, cache_folders
from saelab.cache.format import (
    CacheError,
    CacheManifest,
    ShardInfo,
    is_cache_dir,
    read_manifest,
    verify_checksums,
)
from saelab.cache.source import CacheSource
from saelab.cache.writer import CacheWriter, WriterSettings

__all__ = ["CacheBuildResult", "CacheConfig", "CacheError", "CacheManifest", "CacheSource",
           "CacheWriter", "ShardInfo", "WriterSettings", "build_cache", "cache_folders",
           "is_cache_dir", "read_manifest", "verify_checksums"]
