"""The output folder of a training run: what may go there, and housekeeping on (re)start.

- A run writes only into a new folder, an empty one, or one holding a saelab run (``run.json``);
  a path that is a file, or a non-empty foreign folder, is refused before anything is written.
- On start (under the folder lock) temporary folders and files left by a killed run are removed,
  and ``metrics.jsonl`` is cut back to the step training restarts from, so no step is logged
  twice.
- Resuming compares only the options that change the result: progress display, logging, the
  data-finite scan, the output path and how the data path is spelled do not block a resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from saelab.config import ConfigError
from saelab.io import atomic_write_bytes
from saelab.lock import LOCK_NAME

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
#: (section, key) of run-config options that do not change the trained weights
NOT_RESULT_AFFECTING = {
    ("out",), ("data", "check_finite"), ("train", "progress"), ("train", "measure_peak"),
    ("train", "tensorboard"), ("train", "wandb_project"), ("train", "log_every"),
    ("train", "keep_checkpoints"), ("train", "checkpoint_every"),
    # where the run executes, not what it computes: resume on another device or rank count
    ("train", "device"), ("train", "dist_timeout_s"), ("train", "shard_latents"),
}


def check_output_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder that is not a saelab run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is an existing file; give a folder path for --out")
    if out.is_dir() and not (out / RUN_FILE).exists():
        # The lock and saelab's own temporaries may be there without run.json yet: another run
        # that is just starting (the lock then names it), or one killed before it wrote run.json.
        foreign = sorted(p.name for p in out.iterdir()
                         if p.name != LOCK_NAME and not _is_temporary(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"output folder {out} is not empty ({shown}) and holds no saelab run "
                f"({RUN_FILE}); choose a new or empty folder so nothing there is overwritten")


def _is_temporary(name: str) -> bool:
    """``.NAME.XXXX.tmp`` / ``.NAME.old``: what saelab's atomic writes leave while under way."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old"))


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete ``.NAME.XXXX.tmp`` / ``.NAME.old`` leftovers of interrupted atomic writes in the
    run folder, its checkpoints and final SAEs. Call only while holding the folder lock."""
    removed = []
    for folder in [out, out / "checkpoints", out / "final", *(out / "final").glob("*")]:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _is_temporary(p.name):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def trim_metrics(out: Path, step: int) -> None:
    """Keep only the metrics.jsonl records up to ``step`` (what the restart point has seen)."""
    path = out / METRICS_FILE
    if not path.exists():
        return
    kept = []
    changed = False
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = int(record.get("step", 0)) <= step
        except (ValueError, AttributeError, TypeError):
            keep = False  # a half-written last line from a killed run
        changed |= not keep
        if keep:
            kept.append(line)
    if changed:
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())


#: options added later, whose default reproduces what runs saved before them did
SAME_AS_ABSENT = {("train", "autocast"): "off"}


def comparable_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run config that determines the result, with the data path normalised."""
    cfg = json.loads(json.dumps(run_config))
    for (section_name, option_name), default in SAME_AS_ABSENT.items():
        options = cfg.get(section_name)
        if isinstance(options, dict) and options.get(option_name) == default:
            del options[option_name]
    for key in NOT_RESULT_AFFECTING:
        section = cfg
        for part in key[:-1]:
            section = section.get(part, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict):
            section.pop(key[-1], None)
    data = cfg.get("data")
    if isinstance(data, dict) and data.get("path"):
        data["path"] = os.path.abspath(data["path"])
    return cfg
