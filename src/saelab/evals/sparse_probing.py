"""Sparse probing: how well k SAE latents classify labelled concepts, against a full probe.

For every labelled set (board-state cells of a game LM, classes of an English text task) and
every class column, a one-vs-rest binary task on *balanced* data (as many negatives as
positives, at most ``max_per_class`` of each; chance = 0.5):

1. features per input: SAE codes of its tokens, mean-pooled (SAEBench); raw activations for
   the baseline;
2. **selection rule** (on the training split only): the k latents with the largest
   |mean code over positives − mean code over negatives| (SAEBench's rule), k ∈ ``ks``;
3. a logistic probe (L2, C = 1) on those k latents; held-out accuracy;
4. the **full probe**: the same logistic probe on all raw activation dimensions.

Accuracies are averaged over a set's classes, for each of ``n_splits`` seeds (a new balanced
sample, and for sets without a fixed split a new train/test split); the result gives the mean
and a 95% t-interval over seeds. A class with no positives (or only positives) in a split is
NaN with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.evals.concept_data import JsonResult, LabelledSet, sae_l0
from saelab.evals.probing import batched_accuracy, fit_logistic_batched, pad_rows
from saelab.metrics.concepts import NAN, Interval, Undefined, nan_mean, top_k_latents


@dataclass
class SparseProbingConfig:
    """Options of the sparse-probing evaluation."""

    ks: list[int] = option([1, 2, 5, 10, 20], "numbers of latents k to probe with")
    n_splits: int = option(3, "seeds (balanced resamples and splits) to average over")
    max_per_class: int = option(300, "at most this many positives (and as many negatives) per "
                                "binary task and split side")
    test_fraction: float = option(0.3, "held-out share for sets without a fixed split")
    l2: float = option(1.0, "L2 strength of the logistic probes (1/C)")
    seed: int = option(0, "first seed")

    def validate(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("ks must be a non-empty list of positive integers")
        if self.n_splits < 1 or self.max_per_class < 1:
            raise ConfigError("n_splits and max_per_class must be at least 1")


@dataclass
class TaskScores:
    """One labelled set: accuracy per k (as "k" strings for JSON) and of the full probe."""

    task: str
    n_classes_scored: int
    sparse: dict[str, Interval]
    full_probe: Interval
    per_class_sparse: dict[str, dict[str, float]]  # class -> k -> accuracy (mean over seeds)
    per_class_full: dict[str, float]


@dataclass
class SparseProbingResult(JsonResult):
    sae: str
    d_sae: int
    l0: float
    tasks: dict[str, TaskScores]
    mean_sparse: dict[str, float]  # k -> mean over tasks
    mean_full_probe: float
    undefined: list[Undefined] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def balanced_rows(y_N: Tensor, rows: Tensor, max_per_class: int, generator: torch.Generator
                  ) -> Tensor | None:
    """Equal numbers of positive and negative rows (at most ``max_per_class`` each) from
    ``rows``; None when either class is empty there."""
    pos, neg = rows[y_N[rows]], rows[~y_N[rows]]
    n = min(len(pos), len(neg), max_per_class)
    if n == 0:
        return None
    pick_pos = pos[torch.randperm(len(pos), generator=generator)[:n]]
    pick_neg = neg[torch.randperm(len(neg), generator=generator)[:n]]
    return torch.cat([pick_pos, pick_neg]).sort().values


def probe_task(codes_NM: Tensor, raw_ND: Tensor | None, labels: LabelledSet,
               cfg: SparseProbingConfig, undefined: list[Undefined]) -> TaskScores:
    """Sparse probes of every class of one labelled set (features already pooled), and the full
    probe on ``raw_ND`` (skipped when None: it does not depend on the SAE). The probes of all
    classes at one k are fit as one batch (independent problems)."""
    ks = sorted(set(cfg.ks))
    per_seed_sparse: dict[int, list[float]] = {k: [] for k in ks}
    per_seed_full: list[float] = []
    per_class: dict[str, dict[int, list[float]]] = {c: {k: [] for k in ks}
                                                    for c in labels.class_names}
    per_class_full: dict[str, list[float]] = {c: [] for c in labels.class_names}
    for split in range(cfg.n_splits):
        seed = cfg.seed + split
        generator = torch.Generator().manual_seed(seed)
        train_rows, test_rows = labels.split(seed, cfg.test_fraction)
        problems = []  # (class name, y, train rows, test rows, ranked latents)
        for c, name in enumerate(labels.class_names):
            y = labels.labels_NK[:, c].bool()
            tr = balanced_rows(y, train_rows, cfg.max_per_class, generator)
            te = balanced_rows(y, test_rows, cfg.max_per_class, generator)
            if tr is None or te is None:
                if split == 0:
                    side = "training" if tr is None else "test"
                    undefined.append(Undefined(f"{labels.name}/{name}", "no positives or no "
                                               f"negatives in the {side} split"))
                continue
            problems.append((name, y, tr, te, top_k_latents(codes_NM[tr], y[tr], max(ks))))
        if not problems:
            continue
        for k in ks:
            accs = _fit_and_score([codes_NM[:, ranked[:k]] for *_, ranked in problems],
                                  problems, cfg.l2)
            for (name, *_), acc in zip(problems, accs, strict=True):
                per_class[name][k].append(acc)
            per_seed_sparse[k].append(nan_mean(accs))
        if raw_ND is not None:
            accs = _fit_and_score([raw_ND] * len(problems), problems, cfg.l2)
            for (name, *_), acc in zip(problems, accs, strict=True):
                per_class_full[name].append(acc)
            per_seed_full.append(nan_mean(accs))
    scored = [c for c in labels.class_names if per_class[c][ks[0]]]
    return TaskScores(
        labels.name, len(scored), {str(k): Interval.of(v) for k, v in per_seed_sparse.items()},
        Interval.of(per_seed_full),
        {c: {str(k): nan_mean(per_class[c][k]) for k in ks} for c in scored},
        {c: nan_mean(per_class_full[c]) for c in scored if per_class_full[c]})


def _fit_and_score(features: list[Tensor], problems: list[Any], l2: float) -> list[float]:
    """Held-out accuracy of one logistic probe per problem (its features, labels and rows)."""
    x_tr, y_tr, m_tr = pad_rows([f[tr] for f, (_, _, tr, _, _) in zip(features, problems,
                                                                       strict=True)],
                                [y[tr] for _, y, tr, _, _ in problems])
    x_te, y_te, m_te = pad_rows([f[te] for f, (_, _, _, te, _) in zip(features, problems,
                                                                       strict=True)],
                                [y[te] for _, y, _, te, _ in problems])
    probe = fit_logistic_batched(x_tr, y_tr, m_tr, l2)
    return [float(a) for a in batched_accuracy(probe, x_te, y_te, m_te)]


def full_probes(sets: dict[str, LabelledSet], cfg: SparseProbingConfig
                ) -> dict[str, TaskScores]:
    """The full-probe baseline of every set (same seeds and samples as the sparse probes)."""
    return {name: probe_task(torch.zeros(labels.inputs.n_inputs, 1), labels.inputs.pooled_raw(),
                             labels, replace(cfg, ks=[1]), [])
            for name, labels in sets.items()}


def evaluate_sae(sae: SAE, sets: dict[str, LabelledSet], cfg: SparseProbingConfig,
                 name: str = "sae", baseline: dict[str, TaskScores] | None = None
                 ) -> SparseProbingResult:
    """Sparse probes of one SAE; ``baseline`` (from :func:`full_probes`) is computed when
    not given."""
    cfg.validate()
    baseline = baseline or full_probes(sets, cfg)
    undefined: list[Undefined] = []
    tasks = {}
    for task_name, labels in sets.items():
        task = probe_task(labels.inputs.pooled_codes(sae, "mean"), None, labels, cfg, undefined)
        task.full_probe = baseline[task_name].full_probe
        task.per_class_full = baseline[task_name].per_class_full
        tasks[task_name] = task
    ks = [str(k) for k in sorted(set(cfg.ks))]
    first = next(iter(sets.values()))
    return SparseProbingResult(
        name, sae.cfg.d_sae, sae_l0(sae, first.inputs.acts_TD), tasks,
        {k: nan_mean([t.sparse[k].mean for t in tasks.values()]) for k in ks},
        nan_mean([t.full_probe.mean for t in tasks.values()]) if tasks else NAN,
        undefined, to_dict(cfg))


def run(saes: dict[str, SAE], sets: dict[str, LabelledSet], cfg: SparseProbingConfig
        ) -> dict[str, SparseProbingResult]:
    """Sparse probing of every named SAE on the labelled sets."""
    if not sets:
        raise ConfigError("sparse probing needs at least one labelled set")
    baseline = full_probes(sets, cfg)
    return {name: evaluate_sae(sae, sets, cfg, name, baseline) for name, sae in saes.items()}
