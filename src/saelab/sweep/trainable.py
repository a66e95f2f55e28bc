"""One sweep trial: a resumable saelab training run that reports every ``report_every`` steps.

Each trial trains in ``<sweep out>/trials/<trial id>/``, an ordinary saelab run folder
(``final/<sae>/`` at the end). Its checkpoints are what PBT copies between trials.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from saelab.data.open import open_source
from saelab.io import atomic_write_json
from saelab.run_config import load_run_config
from saelab.sweep.config import apply_params
from saelab.sweep.pbt import current_trial_id, report_state, restored_state
from saelab.training.checkpoint import STATE_FILE, list_checkpoints
from saelab.training.trainer import Trainer

EXPLOITS_FILE = "pbt_exploits.jsonl"


def sae_trial(config: dict[str, Any], *, run: dict[str, Any], sae_name: str, report_every: int,
              root: str) -> None:
    """Ray Tune function trainable: train one SAE with the sampled ``config`` options."""
    out = Path(root) / "trials" / current_trial_id()
    cfg = load_run_config(apply_params(run, sae_name, config))
    ckpt_root = out / "checkpoints"
    reported: dict[str, Any] = {}
    with restored_state() as restored:
        if restored is not None:
            reported = restored.metrics
            step = install_checkpoint(restored.folder, ckpt_root, replace_all=restored.exploited)
            if restored.exploited:
                with (out / EXPLOITS_FILE).open("a") as fh:
                    fh.write(json.dumps({"step": step, "from_trial": restored.origin_trial,
                                         "new_options": config}) + "\n")
    # The sweep owns this folder: after an exploit the run continues with new options.
    atomic_write_json(out / "run.json", cfg.to_dict())
    trainer = Trainer(cfg.sae_configs(), cfg.train, open_source(cfg.data, cfg.train.seed), out,
                      run_config=cfg.to_dict())
    ckpts = list_checkpoints(ckpt_root)
    target = (_step_of(ckpts[-1]) if ckpts else 0) // report_every * report_every + report_every
    exploits = _count_lines(out / EXPLOITS_FILE)
    while True:
        trainer.fit(until_step=target)
        record = trainer.last_metrics.get(sae_name)
        # Restarted at the end (a paused, finished trial): report what was reported with it.
        metrics = reported if record is None else {
            k: v for k, v in record.items() if isinstance(v, int | float)}
        metrics = {**metrics, "step": trainer.step, "exploits": exploits}
        report_state(metrics, list_checkpoints(ckpt_root)[-1])
        if trainer.step >= cfg.train.total_steps:
            return
        target += report_every


def install_checkpoint(folder: Path, ckpt_root: Path, replace_all: bool) -> int:
    """Make ``folder`` the newest checkpoint of this trial (dropping its own later ones, or all
    of them after an exploit) and return its step."""
    step = _step_of(folder)
    for own in list_checkpoints(ckpt_root):
        if replace_all or _step_of(own) >= step:
            shutil.rmtree(own)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_root / f".incoming_{step:09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    tmp.rename(ckpt_root / f"step_{step:09d}")
    return step


def _step_of(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / STATE_FILE).read_text())["step"])


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0
