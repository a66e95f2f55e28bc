"""Population-based training on Ray Tune, generic over the trainable.

A trainable that keeps its state in a folder needs two calls, and nothing else of Ray:

    with restored_state() as restored:   # at start: the state Ray hands this trial, or None
        if restored: ... copy restored.folder into place; restored.exploited says whether it
                     ... came from another (better) trial: PBT's exploit step
    ...train a slice...
    report_state(metrics, folder)          # after each slice: metrics + the state folder

Ray keeps the reported folders; when PBT makes a weak trial copy a strong one, it restarts
the weak trial with mutated hyperparameters and the strong trial's folder. The SAE trainable
(:mod:`saelab.sweep.trainable`) passes saelab checkpoints this way; so can AutoLFADS.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.sweep.config import PBTConfig

ORIGIN_FILE = "pbt_origin.json"


def population_based_training(mutations: dict[str, Any], cfg: PBTConfig, seed: int = 0) -> Any:
    """Ray's PBT scheduler, perturbing at every report of a trial (give the metric and mode to
    ``tune.TuneConfig``)."""
    from ray.tune.schedulers import PopulationBasedTraining

    random.seed(seed)  # PBT's explore step draws from Python's global random module
    return PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=1,
        burn_in_period=cfg.burn_in_reports, hyperparam_mutations=mutations,
        quantile_fraction=cfg.quantile_fraction, resample_probability=cfg.resample_probability,
        perturbation_factors=(cfg.perturbation_factors[0], cfg.perturbation_factors[1]),
        synch=cfg.synch)


def current_trial_id() -> str:
    from ray import tune

    return str(tune.get_context().get_trial_id())


def report_state(metrics: dict[str, Any], folder: Path) -> None:
    """Report ``metrics`` with ``folder`` (the trainable's full state) as the checkpoint."""
    from ray import tune

    (folder / ORIGIN_FILE).write_text(json.dumps({"trial_id": current_trial_id(),
                                                  "metrics": metrics}))
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


@dataclass
class RestoredState:
    folder: Path  # valid inside the ``restored_state`` block only
    origin_trial: str
    exploited: bool  # the state came from another trial (PBT's exploit step)
    metrics: dict[str, Any]  # what was reported with this state


@contextmanager
def restored_state() -> Iterator[RestoredState | None]:
    """The state folder Ray hands this trial at start (after a PBT exploit, a restart or a
    resumed sweep), or None for a fresh trial."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        origin = json.loads((Path(folder) / ORIGIN_FILE).read_text())
        yield RestoredState(Path(folder), origin["trial_id"],
                            origin["trial_id"] != current_trial_id(), origin["metrics"])
