"""Where an evaluation command writes its results, checked before the (slow) evaluation runs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saelab.cli.errors import os_error_message
from saelab.config import ConfigError
from saelab.io import refuse_sae_files


def results_path(out: str | None, sae_dir: Path, default_name: str) -> Path:
    """The results file: ``--out`` (a folder means ``folder/default_name``) or
    ``<sae>/default_name``. Refuses paths that would overwrite the SAE's own files or that lie
    in a folder that cannot be written, before anything is computed."""
    if out is not None and not out.strip():
        raise ConfigError("--out is empty; give a file or folder path")
    path = Path(out) if out else sae_dir / default_name
    if path.is_dir():
        path = path / default_name
    plot = path.with_suffix(".density.png")
    for target in (path, plot):
        refuse_sae_files(target)
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write results to {path}: {existing} is not a writable folder; "
                          "pass --out with a path in a writable folder")
    return path


def write_or_print(path: Path, doc: dict[str, Any], write: Callable[[Path], None]) -> None:
    """Write the results; if that fails, print them to stdout first so they are not lost."""
    try:
        write(path)
    except OSError as err:
        print(json.dumps(doc, indent=2))
        print(f"could not write {path}; the full results are printed above", file=sys.stderr)
        raise ConfigError(f"writing {path}: {os_error_message(err)}") from err
