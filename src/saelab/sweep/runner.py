"""Run or resume a sweep on Ray Tune and write its results table and plot."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from saelab.config import ConfigError, to_dict
from saelab.io import atomic_write_bytes, atomic_write_json
from saelab.sweep.config import SweepFile, tune_domain
from saelab.sweep.pbt import population_based_training
from saelab.sweep.trainable import sae_trial

EXPERIMENT = "sweep"
#: Columns of the results table besides the swept options (all from the trial's last report).
METRIC_COLUMNS = ("step", "mse", "l0", "explained_variance", "dead_share", "exploits")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError("saelab sweep runs on Ray Tune: pip install 'saelab[sweep]'") from err
    return ray


def run_sweep(sf: SweepFile, out: Path, resume: bool = True) -> list[dict[str, Any]]:
    """Run the sweep (or resume the one in ``out``) and return one row per trial."""
    ray = import_ray()
    from ray import tune

    s = sf.sweep
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = {"run": sf.run.to_dict(), "sweep": to_dict(s)}
    check_same_spec(out / "sweep.json", spec, resume, "sweep")
    atomic_write_json(out / "sweep.json", spec)
    space = {key: tune_domain(value, s.search) for key, value in s.params.items()}
    scheduler = (population_based_training(space, s.pbt, s.seed)
                 if s.search == "pbt" else None)
    if not ray.is_initialized():
        ray.init(address=s.address or None, num_cpus=None if s.address else (s.num_cpus or None),
                 include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(
        tune.with_parameters(sae_trial, run=sf.run.to_dict(), sae_name=sf.sae_name,
                             report_every=s.report_every, root=str(out)),
        {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})
    results = fit_tuner(trainable, out=out, experiment=EXPERIMENT, what="the sweep",
                        space=space, metric=s.metric, mode=s.mode, scheduler=scheduler,
                        num_samples=s.num_samples, seed=s.seed,
                        total_steps=sf.run.train.total_steps, resume=resume)
    rows = [_row(result, s.params, sf.run.train.total_steps) for result in results]
    write_results(rows, out, s.metric, s.mode, [r.metrics_dataframe for r in results])
    return rows


def fit_tuner(trainable: Any, *, out: Path, experiment: str, what: str, space: dict[str, Any],
              metric: str, mode: str, scheduler: Any, num_samples: int, seed: int,
              total_steps: int, resume: bool) -> list[Any]:
    """Resume the Tune experiment in ``out/ray/<experiment>`` or start it; fit; one result per
    trial. Shared by ``saelab sweep`` and AutoLFADS."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    path = out / "ray" / experiment
    if resume and tune.Tuner.can_restore(str(path)):
        print(f"resuming {what} in {out}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, scheduler=scheduler, num_samples=num_samples,
                search_alg=BasicVariantGenerator(random_state=seed),
                reuse_actors=True),  # PBT restarts trials often: keep their processes
            # A trial is done at its last step; without this PBT would keep exploiting into it.
            run_config=tune.RunConfig(name=experiment, storage_path=str(out / "ray"), verbose=1,
                                      stop={"step": total_steps},
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=4)))
    grid = tuner.fit()
    return [grid[i] for i in range(len(grid))]


def check_same_spec(path: Path, spec: dict[str, Any], resume: bool, what: str) -> None:
    """Refuse to start over (``--fresh``) or to resume with other options in a folder that
    already holds a run; the user's results are never replaced."""
    if not path.exists():
        return
    if not resume:
        raise ConfigError(f"{path.parent} already holds {what}; drop --fresh to resume it or "
                          "use a new output folder")
    if json.loads(path.read_text()) != json.loads(json.dumps(spec)):
        raise ConfigError(f"{path.parent} holds a different {what}; resume it with the same "
                          "options or use a new output folder")


def _row(result: Any, params: dict[str, Any], total_steps: int) -> dict[str, Any]:
    metrics = result.metrics or {}
    row: dict[str, Any] = {"trial": metrics.get("trial_id", Path(result.path).name)}
    row.update({key: result.config.get(key) for key in params})
    row.update({col: metrics.get(col) for col in METRIC_COLUMNS})
    finished = (metrics.get("step") or 0) >= total_steps
    row["status"] = "error" if result.error else "done" if finished else "stopped (resumable)"
    return row


def write_results(rows: list[dict[str, Any]], out: Path, metric: str, mode: str,
                  curves: list[Any]) -> None:
    """``sweep_results.json`` / ``.csv`` (one row per trial) and ``sweep_plot.png``."""
    rows = sorted(rows, key=lambda r: _sort_key(r.get(metric), mode))
    if metric not in METRIC_COLUMNS:
        for row in rows:
            row.setdefault(metric, None)
    atomic_write_json(out / "sweep_results.json", {"metric": metric, "mode": mode, "trials": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "sweep_results.csv", buf.getvalue().encode())
    _plot(curves, metric, out / "sweep_plot.png")


def _sort_key(value: Any, mode: str) -> float:
    if not isinstance(value, int | float):
        return float("inf")
    return float(value) if mode == "min" else -float(value)


def _plot(curves: list[Any], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for frame in curves:
        if frame is not None and metric in frame and "step" in frame:
            ax.plot(frame["step"], frame[metric], marker=".", alpha=0.8,
                    label=str(frame["trial_id"].iloc[-1]) if "trial_id" in frame else None)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title("sweep: one line per trial (jumps are PBT exploits)")
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def format_table(rows: list[dict[str, Any]], metric: str, mode: str) -> str:
    """Markdown table of the trials, best first, with a one-sentence conclusion and warnings."""
    if not rows:
        return "no trials ran"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    best = rows[0]
    lines.append(f"\nBest trial: {best['trial']} with {metric} = {_fmt(best.get(metric))} "
                 f"({'lowest' if mode == 'min' else 'highest'}).")
    l0s = [r["l0"] for r in rows if isinstance(r.get("l0"), int | float)]
    if l0s and max(l0s) > 1.1 * max(min(l0s), 1e-9):
        lines.append(f"Warning: L0 ranges from {min(l0s):.1f} to {max(l0s):.1f}; reconstruction "
                     "metrics of SAEs at different L0 are not a fair comparison.")
    dead = [r for r in rows if isinstance(r.get("dead_share"), int | float) and r["dead_share"] > 0.5]
    if dead:
        lines.append(f"Warning: {len(dead)} trial(s) have over half their latents dead.")
    lines.append("Columns: the swept options; step = last reported training step; mse, l0, "
                 "explained_variance, dead_share = the SAE's training metrics at that step; "
                 "exploits = times PBT replaced the trial's weights by a better trial's; "
                 "status = done, stopped (rerun the command to resume) or error.")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
