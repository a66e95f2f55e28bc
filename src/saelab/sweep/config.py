"""The ``[sweep]`` section of a sweep file and the Ray Tune search space it describes.

A sweep file is a run file (``[data]``, ``[train]``, exactly one ``[saes.NAME]``) plus::

    [sweep]
    search = "pbt"             # grid | random | pbt
    metric = "mse"             # any logged training metric of the SAE
    mode = "min"
    num_samples = 4            # random/pbt: trials; grid: repeats of the whole grid
    report_every = 200         # steps between reports (the PBT perturbation interval)
    [sweep.params]             # "train.OPTION" or "sae.OPTION"
    "train.lr" = {loguniform = [1e-4, 1e-2]}
    "sae.k" = [16, 32]         # a list: grid values, or a choice for random/pbt
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from saelab.config import ConfigError, from_dict, load_file, option
from saelab.registry import get_architecture
from saelab.run_config import RunConfig, load_run_config
from saelab.training.config import TrainConfig

#: Options that change an SAE's shape or kind: a PBT trial cannot switch them mid-training.
SHAPE_OPTIONS = ("architecture", "d_in", "d_sae", "expansion")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


@dataclass
class PBTConfig:
    quantile_fraction: float = option(0.25, "bottom share of trials that copy a top trial")
    resample_probability: float = option(0.25, "chance an exploited value is resampled, "
                                         "not perturbed")
    perturbation_factors: list[float] = option([1.2, 0.8], "factors a continuous value is "
                                               "multiplied by when perturbed")
    burn_in_reports: int = option(0, "reports before a trial may be exploited")
    synch: bool = option(True, "wait for every trial to reach each report before exploiting "
                         "(fair in small populations; false = asynchronous, no waiting)")


@dataclass
class SweepConfig:
    search: Literal["grid", "random", "pbt"] = option("random", "how trials choose options")
    metric: str = option("mse", "metric the search optimises (a logged training metric)")
    mode: Literal["min", "max"] = option("min", "minimise or maximise the metric")
    num_samples: int = option(4, "trials (random, pbt) or repeats of the grid (grid)")
    report_every: int = option(100, "training steps between reports (PBT perturbation interval)")
    cpus_per_trial: float = option(1.0, "CPUs Ray reserves per trial")
    gpus_per_trial: float = option(0.0, "GPUs Ray reserves per trial (set train.device = cuda)")
    num_cpus: int = option(0, "CPUs of the local Ray instance (0 = all)")
    address: str = option("", "address of an existing Ray cluster ('' = start Ray locally)")
    seed: int = option(0, "seed of the random search and of PBT's explore step")
    params: dict[str, Any] = field(default_factory=dict)
    pbt: PBTConfig = field(default_factory=PBTConfig)

    def validate(self, run: RunConfig) -> None:
        if not self.params:
            raise ConfigError("the sweep has no [sweep.params]: name at least one option to vary")
        if self.num_samples < 1 or self.report_every < 1:
            raise ConfigError("sweep.num_samples and sweep.report_every must be >= 1")
        if len(self.pbt.perturbation_factors) != 2:
            raise ConfigError("sweep.pbt.perturbation_factors takes two factors, e.g. [1.2, 0.8]")
        if self.search == "pbt" and self.num_samples < 2:
            raise ConfigError("pbt needs a population: set sweep.num_samples >= 2")
        arch = get_architecture(sae_options(run)["architecture"])
        sae_names = {f.name for f in fields(arch.config_class)}
        train_names = {f.name for f in fields(TrainConfig)}
        for key, spec in self.params.items():
            section, _, name = key.partition(".")
            known = {"train": train_names, "sae": sae_names}.get(section)
            if known is None or name not in known:
                raise ConfigError(f"sweep parameter {key!r}: use 'train.OPTION' or 'sae.OPTION' "
                                  "with an option of the trainer or of the SAE's architecture")
            if self.search == "pbt" and section == "sae" and name in SHAPE_OPTIONS:
                raise ConfigError(f"pbt cannot vary {key!r}: it changes the SAE's shape, and PBT "
                                  "copies weights between trials; use grid or random search")
            _check_spec(key, spec, self.search)


@dataclass
class SweepFile:
    run: RunConfig
    sweep: SweepConfig

    @property
    def sae_name(self) -> str:
        return next(iter(self.run.saes))


def sae_options(run: RunConfig) -> dict[str, Any]:
    if len(run.saes) != 1:
        raise ConfigError(f"a sweep file trains one SAE per trial: give exactly one [saes.NAME] "
                          f"table (got {len(run.saes)})")
    return dict(next(iter(run.saes.values())))


def load_sweep_file(path: str | Path) -> SweepFile:
    data = load_file(path)
    sweep_data = data.pop("sweep", None)
    if sweep_data is None:
        raise ConfigError(f"{path} has no [sweep] section; see `saelab sweep --help`")
    run = load_run_config(data)
    if run.data.path:  # trials run in other folders (Ray workers): make the path absolute
        run.data.path = str((Path(path).parent / run.data.path).resolve()
                            if not Path(run.data.path).is_absolute() else Path(run.data.path))
    sweep = from_dict(SweepConfig, sweep_data, where="sweep")
    sweep.validate(run)
    return SweepFile(run, sweep)


def _check_spec(key: str, spec: Any, search: str) -> None:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"sweep parameter {key!r}: empty list of values")
        return
    if search == "grid":
        raise ConfigError(f"sweep parameter {key!r}: grid search needs a list of values")
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
        raise ConfigError(f"sweep parameter {key!r}: give a list of values or one of "
                          f"{{{', '.join(f'{d} = [...]' for d in DISTRIBUTIONS)}}}")
    kind, args = next(iter(spec.items()))
    if kind != "choice" and (not isinstance(args, list) or len(args) != 2 or args[0] >= args[1]):
        raise ConfigError(f"sweep parameter {key!r}: {kind} needs [low, high] with low < high")


def tune_domain(spec: Any, search: str) -> Any:
    """A Ray Tune search-space entry for one parameter spec."""
    from ray import tune

    if isinstance(spec, list):
        return tune.grid_search(spec) if search == "grid" else tune.choice(spec)
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return tune.choice(args)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": tune.randint}[kind](*args)


def apply_params(run: dict[str, Any], sae_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the run-config dict with "train.X" / "sae.X" values set."""
    out = {**run, "train": dict(run["train"]), "saes": {sae_name: dict(run["saes"][sae_name])}}
    for key, value in params.items():
        section, _, name = key.partition(".")
        target = out["train"] if section == "train" else out["saes"][sae_name]
        target[name] = value.item() if hasattr(value, "item") else value
    return out
