"""AutoLFADS: population-based training of LFADS on Ray Tune, through the generic PBT of
:mod:`saelab.sweep.pbt`.

Each worker trains one LFADS run in ``<out>/trials/<id>/`` and reports every
``steps_per_generation`` steps with its sample-validation loss (``valid_sv``); PBT makes the
worst workers copy the best ones' checkpoints (weights, Adam state, RNG) and perturb the
searched options (lr, dropout, cd_rate, kl_weight, l2_weight) by ×0.8 or ×1.2. The best worker
at the end (lowest ``valid_sv``) is evaluated on the test trials.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.config import ConfigError, from_dict, option, to_dict
from saelab.io import atomic_write_json
from saelab.lfads.config import LFADSRunConfig
from saelab.lfads.data import SpikeData
from saelab.lfads.trainer import LFADSTrainer
from saelab.sweep.config import PBTConfig
from saelab.sweep.pbt import (
    current_trial_id,
    population_based_training,
    report_state,
    restored_state,
)
from saelab.sweep.runner import check_same_spec, fit_tuner, import_ray, write_results
from saelab.sweep.trainable import install_checkpoint
from saelab.training.checkpoint import list_checkpoints

EXPERIMENT = "autolfads"
EXPLOITS_FILE = "pbt_exploits.jsonl"
SELECTION_METRIC = "valid_sv"
#: searched options and where PBT's perturbations are clipped to (shares stay below 1)
SEARCHED = ("lr", "dropout", "cd_rate", "kl_weight", "l2_weight")
LIMITS = {"lr": (1e-5, 0.1), "dropout": (0.0, 0.7), "cd_rate": (0.0, 0.7),
          "kl_weight": (1e-3, 100.0), "l2_weight": (1e-4, 100.0)}
REPORT_COLUMNS = ("step", "valid_sv", "valid_recon", "valid_rate_r2", "exploits")


@dataclass
class AutoLFADSConfig:
    population: int = option(8, "workers trained side by side")
    generations: int = option(10, "rounds of training + exploit/explore")
    steps_per_generation: int = option(100, "optimiser steps between PBT reports")
    lr: list[float] = option([1e-3, 2e-2], "initial range of lr (log-uniform)")
    dropout: list[float] = option([0.0, 0.4], "initial range of dropout (uniform)")
    cd_rate: list[float] = option([0.1, 0.5], "initial range of the CD rate (uniform)")
    kl_weight: list[float] = option([0.1, 10.0], "initial range of the KL weight (log-uniform)")
    l2_weight: list[float] = option([0.01, 10.0], "initial range of the L2 weight (log-uniform)")
    cpus_per_trial: float = option(1.0, "CPUs Ray reserves per worker")
    num_cpus: int = option(0, "CPUs of the local Ray instance (0 = all)")
    address: str = option("", "address of an existing Ray cluster ('' = start Ray locally)")
    seed: int = option(0, "seed of the initial draws and of PBT's explore step")
    pbt: PBTConfig = field(default_factory=lambda: PBTConfig(quantile_fraction=0.25))

    def validate(self) -> None:
        if self.population < 2:
            raise ConfigError("PBT needs a population: set population >= 2")
        if self.generations < 1 or self.steps_per_generation < 1:
            raise ConfigError("generations and steps_per_generation must be >= 1")
        for name in SEARCHED:
            low, high = getattr(self, name)
            lo_lim, hi_lim = LIMITS[name]
            if not lo_lim <= low <= high <= hi_lim:
                raise ConfigError(f"{name} range [{low}, {high}] must be ordered and within "
                                  f"[{lo_lim}, {hi_lim}]")

    @property
    def total_steps(self) -> int:
        return self.generations * self.steps_per_generation


def search_space(cfg: AutoLFADSConfig) -> dict[str, Any]:
    from ray import tune

    def dist(name: str) -> Any:
        low, high = getattr(cfg, name)
        if low == high:
            return tune.choice([low])
        log = name in ("lr", "kl_weight", "l2_weight")
        return (tune.loguniform if log else tune.uniform)(low, high)

    return {name: dist(name) for name in SEARCHED}


def trial_run(run: dict[str, Any], params: dict[str, Any]) -> LFADSRunConfig:
    """The run config of one worker: the searched options set (clipped to their limits)."""
    cfg = from_dict(LFADSRunConfig, run)
    for name, value in params.items():
        low, high = LIMITS[name]
        setattr(cfg.train, name, min(high, max(low, float(value))))
    return cfg


def lfads_trial(config: dict[str, Any], *, run: dict[str, Any], root: str,
                report_every: int) -> None:
    """Ray Tune function trainable: one AutoLFADS worker."""
    out = Path(root) / "trials" / current_trial_id()
    cfg = trial_run(run, config)
    ckpt_root = out / "checkpoints"
    with restored_state() as restored:
        if restored is not None:
            step = install_checkpoint(restored.folder, ckpt_root, replace_all=restored.exploited)
            if restored.exploited:
                out.mkdir(parents=True, exist_ok=True)
                with (out / EXPLOITS_FILE).open("a") as fh:
                    fh.write(json.dumps({"step": step, "from_trial": restored.origin_trial,
                                         "new_options": to_dict(cfg.train)}) + "\n")
    data = SpikeData.load(cfg.data).subset(cfg.n_train)
    trainer = LFADSTrainer(data, cfg.model, cfg.train, out, config_may_change=True)
    ckpts = list_checkpoints(ckpt_root)
    start = json.loads((ckpts[-1] / "trainer.json").read_text())["step"] if ckpts else 0
    target = start // report_every * report_every + report_every
    exploits = len((out / EXPLOITS_FILE).read_text().splitlines()) if (
        out / EXPLOITS_FILE).exists() else 0
    while True:
        metrics = trainer.fit(until_step=target)
        report = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        report.update({"step": trainer.step, "exploits": exploits,
                       **{name: getattr(cfg.train, name) for name in SEARCHED}})
        report_state(report, list_checkpoints(ckpt_root)[-1])
        if trainer.step >= cfg.train.steps:
            return
        target += report_every


def run_autolfads(run: LFADSRunConfig, auto: AutoLFADSConfig, out: Path,
                  resume: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) AutoLFADS; returns one row per worker, best (lowest valid_sv) first."""
    auto.validate()
    ray = import_ray()
    from ray import tune

    out = out.resolve()
    if not run.data:
        raise ConfigError("the run has no data file: set `data` (a .npz spikes file)")
    run = dataclasses.replace(run, data=str(Path(run.data).resolve()))
    run.train.steps = auto.total_steps
    if run.train.threads == 0:
        run.train.threads = 1  # workers run side by side: one thread each
    run.train.progress = False
    SpikeData.load(run.data)  # fail here, not in every worker, if the file is bad
    spec = {"run": to_dict(run), "autolfads": to_dict(auto)}
    spec_path = out / "autolfads.json"
    check_same_spec(spec_path, spec, resume, "AutoLFADS run")
    atomic_write_json(spec_path, spec)
    space = search_space(auto)
    scheduler = population_based_training(space, auto.pbt, auto.seed)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        start_ray(ray, auto)
    trainable = tune.with_resources(
        tune.with_parameters(lfads_trial, run=to_dict(run), root=str(out),
                             report_every=auto.steps_per_generation),
        {"cpu": auto.cpus_per_trial})
    results = fit_tuner(trainable, out=out, experiment=EXPERIMENT, what="AutoLFADS",
                        space=space, metric=SELECTION_METRIC, mode="min", scheduler=scheduler,
                        num_samples=auto.population, seed=auto.seed,
                        total_steps=auto.total_steps, resume=resume)
    rows = []
    for result in results:
        metrics = result.metrics or {}
        row: dict[str, Any] = {"trial": metrics.get("trial_id", Path(result.path).name)}
        config = result.config or {}
        row.update({name: metrics.get(name, config.get(name)) for name in SEARCHED})
        row.update({col: metrics.get(col) for col in REPORT_COLUMNS})
        done = (metrics.get("step") or 0) >= auto.total_steps
        row["status"] = "error" if result.error else "done" if done else "stopped (resumable)"
        rows.append(row)
    write_results(rows, out, SELECTION_METRIC, "min", [r.metrics_dataframe for r in results])
    return sorted(rows, key=lambda r: (r["status"] != "done", _num(r.get(SELECTION_METRIC))))


def start_ray(ray: Any, auto: AutoLFADSConfig, attempts: int = 3) -> None:
    """``ray.init``, retried: a local Ray gives its raylet a fixed 30 s to start, which a busy
    machine can miss."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=auto.address or None,
                     num_cpus=None if auto.address else (auto.num_cpus or None),
                     include_dashboard=False, log_to_driver=False)
            return
        except Exception as err:  # Ray raises a bare Exception on a startup timeout
            if auto.address or attempt == attempts or "timed out" not in str(err):
                raise
            print(f"Ray did not start in time (attempt {attempt} of {attempts}): {err}; "
                  "retrying", file=sys.stderr)
            ray.shutdown()


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value == value else float("inf")


def best_trial_folder(out: Path, rows: list[dict[str, Any]]) -> Path:
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        raise ConfigError(f"no AutoLFADS worker in {out} finished; rerun the command to resume")
    return out / "trials" / str(done[0]["trial"])


def format_rows(rows: list[dict[str, Any]]) -> str:
    cols = ["trial", *SEARCHED, *REPORT_COLUMNS, "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(
            f"{row.get(c):.4g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
            for c in cols) + " |")
    lines.append("Columns: the searched options (final values of the worker); step = last "
                 "reported step; valid_sv = sample-validation NLL per entry (the selection "
                 "metric, lower is better); valid_recon = ordinary validation NLL per entry "
                 "(blind to overfitting); valid_rate_r2 = rate R² on validation trials when the "
                 "data has true rates (diagnostic, not used to select); exploits = times PBT "
                 "replaced the worker's weights by a better worker's.")
    return "\n".join(lines)
