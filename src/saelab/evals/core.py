"""Core evaluation of a saved SAE on an activation file: reconstruction, sparsity, density."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.architectures.base import SAE
from saelab.cache.format import is_cache_dir
from saelab.cache.source import CacheSource
from saelab.config import ConfigError, option
from saelab.data.arrays import open_array
from saelab.data.base import DataError, check_finite
from saelab.data.paired import PairedSource, open_paired
from saelab.io import atomic_write_json
from saelab.metrics.core import CoreMetrics, CoreMetricsAccumulator
from saelab.metrics.proxies import DEFAULT_PROXY_BATCH, ProxyAccumulator, ProxyMetrics


@dataclass
class CoreEvalConfig:
    max_rows: int = option(200_000, "evaluate on at most this many rows (0 = all)")
    batch_size: int = option(4096, "rows per forward pass")
    dense_threshold: float = option(0.1, "firing density above which a latent counts as dense")
    proxy_n: int = option(0, "n of the nth decoder projection s_n^dec (0 = half the latents)")
    proxy_batch_size: int = option(DEFAULT_PROXY_BATCH, "rows per batch of s_n^dec")

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.max_rows < 0:
            raise ConfigError(f"max_rows must be >= 0 (0 = all rows), got {self.max_rows}")
        if not 0 < self.dense_threshold <= 1:
            raise ConfigError(f"dense_threshold must be in (0, 1], got {self.dense_threshold}")


@dataclass
class CoreEvalResult:
    sae_path: str
    data_path: str
    metrics: CoreMetrics
    proxies: ProxyMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"sae": self.sae_path, "data": self.data_path,
               "metrics": self.metrics.to_dict(include_density=True)}
        if self.proxies is not None:
            out["proxies"] = self.proxies.to_dict()
        return out

    def scalars(self) -> dict[str, float]:
        """Every scalar metric, proxies included (c_dec, s_n_dec), as one flat dict."""
        out: dict[str, float] = {k: float(v) for k, v in self.metrics.to_dict().items()
                                 if isinstance(v, int | float)}
        if self.proxies is not None:
            out["c_dec"] = self.proxies.decoder_pairwise_cosine
            out["s_n_dec"] = self.proxies.nth_decoder_projection
        return out

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())


@torch.no_grad()
def evaluate_on_array(sae: SAE, array: Any, cfg: CoreEvalConfig,
                      where: str = "data", proxies: ProxyAccumulator | None = None) -> CoreMetrics:
    """Stream rows through the SAE (in order; the metrics are order-free) and accumulate; the
    reconstruction targets also go to `proxies` when given."""
    if array.shape[1] != sae.data_width:
        raise DataError(f"{where} has width {array.shape[1]} but the SAE expects rows of width "
                        f"{sae.data_width}; evaluate on activations from the SAE's hook(s)")
    sae.eval()
    n = array.shape[0] if cfg.max_rows <= 0 else min(cfg.max_rows, array.shape[0])
    acc = CoreMetricsAccumulator(sae.cfg.d_sae, dense_threshold=cfg.dense_threshold)
    for start in range(0, n, cfg.batch_size):
        x = torch.from_numpy(np.array(array[start:min(n, start + cfg.batch_size)], dtype=np.float32))
        check_finite(x, f"{where} rows {start}..{start + x.shape[0]}")
        inputs, target = sae.split_data(x)  # a transcoder predicts a target from its input
        codes = sae.encode(inputs)
        acc.update(target, sae.reconstruct(inputs, codes), codes)
        if proxies is not None:
            proxies.update(target)
    return acc.compute()


class SourceRows:
    """Row slices of an activation cache or a paired source, read like an array."""

    def __init__(self, source: CacheSource | PairedSource) -> None:
        self.source = source
        self.shape = (source.n_rows, source.d_in)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        if isinstance(self.source, CacheSource):
            return self.source.read_rows(start, stop)
        return self.source.take(np.arange(start, stop))


def open_rows(data_path: str, key: str = "", pair: list[str] | None = None) -> Any:
    """An activation file (memory-mapped), a `saelab cache` folder, or (with ``pair``) paired
    sources read row by row, sliceable by rows."""
    if pair:
        return SourceRows(open_paired([data_path, *pair]))
    path = Path(data_path)
    if path.is_dir():
        if key:
            raise DataError(f"data key {key!r} applies to .safetensors files, not to the folder "
                            f"{path}; remove it")
        if not is_cache_dir(path):
            raise DataError(f"{path} is a folder but not an activation cache (no manifest.json); "
                            "pass a .npy/.safetensors file or a folder made by saelab cache")
        return SourceRows(CacheSource(path, shuffle=False))
    return open_array(path, key or None)


def run(sae: SAE, sae_path: str, data_path: str, cfg: CoreEvalConfig,
        data_key: str = "", pair: list[str] | None = None) -> CoreEvalResult:
    cfg.validate()
    rows = open_rows(data_path, data_key, pair)
    # The proxies read the decoder against what it reconstructs; they need its output width to
    # be the row width (plain SAEs and crosscoders, not transcoders' [input | target] rows).
    proxies = (ProxyAccumulator(sae.W_dec, sae.b_dec, cfg.proxy_n or None, cfg.proxy_batch_size)
               if sae.cfg.d_sae >= 2 and sae.W_dec.shape[1] == rows.shape[1] else None)
    metrics = evaluate_on_array(sae, rows, cfg, where=data_path, proxies=proxies)
    return CoreEvalResult(sae_path, " + ".join([data_path, *(pair or [])]), metrics,
                          proxies.compute() if proxies is not None else None)


def density_histogram(result: CoreEvalResult, path: Path) -> Path:
    """Plot log10 firing density per latent (dead latents counted separately)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    density = result.metrics.latent_density_M.numpy()
    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if alive.size:
        ax.hist(np.log10(alive), bins=50, color="#3b6ea5")
    n_dead = int((density == 0).sum())
    ax.set_xlabel("log10 firing density")
    ax.set_ylabel("latents")
    ax.set_title(f"latent firing density ({n_dead} dead of {density.size})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(rows: list[tuple[str, float]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = []
    for k, v in rows:
        text = f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) and not float(v).is_integer() else str(v)
        lines.append(f"{k.ljust(width)}  {text}")
    return "\n".join(lines)
