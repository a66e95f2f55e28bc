"""``saelab explore``: a local web explorer over an SAE's feature store.

Serves an index (search by id or label text, sort by density or max activation, type text and
see which latents fire), a page per latent and the same data as JSON under /api/. Binds
127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  saelab explore runs/topk/final/topk                 (the store in runs/topk/final/topk/features)
  saelab explore runs/topk/final/topk --port 8080
  saelab explore share/store --sae runs/topk/final/topk --model gpt2
The store refuses an SAE whose weights differ from the ones it was built for."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("explore", allow_abbrev=False, help="browse an SAE's latents in a browser",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="SAE folder (with features/), store folder or features.db")
    p.add_argument("--store", help="store folder when it is not PATH/features")
    p.add_argument("--sae", help="SAE folder (default: the one the store was built from)")
    p.add_argument("--model", help="model for live text (default: the one the store records)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    p.add_argument("--no-live", action="store_true", help="do not offer live text or the steering box")
    p.add_argument("--quiet", action="store_true", help="no request log")
    p.set_defaults(run=run)


def open_explorer(path: str, store_dir: str | None = None, sae_dir: str | None = None,
                  model: str | None = None, live: bool = True) -> Any:
    """The ExploreApp for a path (the store checked against its SAE's weights)."""
    from saelab.explore import ExploreApp, LiveEncoder
    from saelab.features import FeatureStore, ModelSpec, read_meta, resolve_store
    from saelab.io import CheckpointError, load

    db = resolve_store(store_dir or path)
    meta = read_meta(db)
    sae_path = sae_dir or (path if (Path(path) / "cfg.json").exists() else meta.get("sae_path"))
    sae = None
    if sae_path:
        try:
            sae = load(sae_path)
        except CheckpointError as err:
            if sae_dir:
                raise
            print(f"explore: warning: cannot load the SAE at {sae_path} ({err}); live text is off "
                  "and the store is not checked against weights (pass --sae)", file=sys.stderr)
    store = FeatureStore(db, sae)
    encoder = None
    if live and sae is not None:
        spec = ModelSpec.from_dict(meta.get("model", {"kind": "none"}))
        if model:
            spec.name = model
            spec.kind = spec.kind if spec.kind != "none" else "hf"
        if spec.kind != "none":
            encoder = LiveEncoder(sae, spec)
    return ExploreApp(store, encoder)


def public_host_warning(host: str) -> str:
    """A warning for a bind address other machines can reach ('' for loopback)."""
    if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
        return ""
    return (f"explore: warning: --host {host} makes the explorer (and its label form) reachable "
            "from other machines; it has no authentication")


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from saelab.explore import ExploreServer

    app = open_explorer(args.path, args.store, args.sae, args.model, not args.no_live)
    warning = public_host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    server = ExploreServer(app, args.host, args.port, quiet=args.quiet)
    print(f"saelab explore: serving {app.store.path} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        server.httpd.server_close()
    return 0
