"""Static HTML export of a store: ``index.html`` plus ``feature/<id>.html`` per latent, each
page self-contained (inline CSS and SVG), linked by relative paths, ready to share or host."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from saelab.explore import pages
from saelab.features.store import FeatureStore
from saelab.io import atomic_write_dir


def export_html(store: FeatureStore, out: str | Path, latents: list[int] | None = None,
                progress: bool = True) -> Path:
    """Write the pages of ``latents`` (default: all) into folder ``out`` (replaced atomically)."""
    links = pages.Links(static=True)
    ids = list(range(store.n_latents)) if latents is None else latents
    for latent in ids:
        if not store.has(latent):
            raise ValueError(f"latent {latent} does not exist (0..{store.n_latents - 1})")

    def fill(tmp: Path) -> None:
        (tmp / "feature").mkdir()
        rows = store.list_latents("id", False, limit=store.n_latents)
        wanted = set(ids)
        (tmp / "index.html").write_text(pages.index_page(
            store.meta, [r for r in rows if r["id"] in wanted], links, live=False))
        start = last = time.perf_counter()
        for done, latent in enumerate(ids, 1):
            data = store.feature(latent)
            assert data is not None
            (tmp / "feature" / f"{latent}.html").write_text(
                pages.feature_page(data, store.meta, links))
            if progress and time.perf_counter() - last > 2:
                last = time.perf_counter()
                rate = done / (last - start)
                print(f"export: {done:,}/{len(ids):,} pages | {rate:,.0f} pages/s | ETA "
                      f"{(len(ids) - done) / rate:.0f} s", file=sys.stderr, flush=True)

    atomic_write_dir(Path(out), fill)
    return Path(out)
