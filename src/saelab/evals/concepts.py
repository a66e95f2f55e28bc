"""The concept suite: absorption, sparse probing, monosemanticity and concept cones of several
SAEs on one model, with the inputs collected once.

Two kinds of model:
- a **game LM** (``othello``, ``chess`` or a game-LM folder): labelled sets are the board-state
  properties (sparse probing on the cells of ``board_squares``; cones on every cell of the
  first property); MS embeds each position by its one-hot board state; absorption does not
  apply (it needs a vocabulary of words) and is skipped with that reason;
- a **Hugging Face text model** (a hub id or folder; default the packaged MiniLM): labelled
  sets are the text tasks of ``saelab.text.tasks``; MS embeds each text with the packaged MiniLM
  (the model's own pass when the model is MiniLM); absorption reads the vocabulary's words.

:func:`run_suite` returns one :class:`SAEConcepts` per SAE; :func:`summary_rows`,
:func:`format_table` and :func:`plot_comparison` compare them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.evals import absorption, concept_cones, monosemanticity, sparse_probing
from saelab.evals.concept_data import (
    InputActivations,
    JsonResult,
    LabelledSet,
    labels_one_hot,
    load_text_model,
    sae_l0,
    text_activations,
)
from saelab.training.logging import StageProgress

EVALS = ("absorption", "sparse_probing", "monosemanticity", "concept_cones")
DEFAULT_TEXT_HOOK = "encoder.layer.3"


@dataclass
class ConceptSuiteConfig:
    """What to evaluate, on which model, with which inputs."""

    model: str = option("", "othello, chess, a game-LM folder, or a Hugging Face id/folder; "
                        "empty = the packaged MiniLM")
    hook: str = option("", f"hook point of a text model (default {DEFAULT_TEXT_HOOK})")
    layer: int = option(-1, "residual stream after this block of a game LM; -1 = its default")
    evals: list[str] = option(list(EVALS), f"evaluations to run, from {list(EVALS)}")
    text_tasks: list[str] = option(["docstrings", "sentiment"], "labelled text tasks")
    per_class: int = option(200, "texts per class of each text task (seeded sample)")
    max_length: int = option(64, "truncate texts to this many tokens")
    train_games: int = option(100, "game LM: games for training probes and CBM heads")
    test_games: int = option(100, "game LM: held-out games")
    board_squares: list[str] = option(["a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8"],
                                      "game LM: squares whose cells sparse probing uses")
    ms_inputs: int = option(2000, "inputs for the monosemanticity score (seeded sample)")
    seed: int = option(0, "seed of the samples and games")
    absorption: absorption.AbsorptionConfig = field(default_factory=absorption.AbsorptionConfig)
    probing: sparse_probing.SparseProbingConfig = field(
        default_factory=sparse_probing.SparseProbingConfig)
    monosemanticity: monosemanticity.MonosemanticityConfig = field(
        default_factory=monosemanticity.MonosemanticityConfig)
    cones: concept_cones.ConeConfig = field(default_factory=concept_cones.ConeConfig)

    def validate(self) -> None:
        unknown = sorted(set(self.evals) - set(EVALS))
        if unknown or not self.evals:
            raise ConfigError(f"unknown evaluation(s) {unknown}; choose from {list(EVALS)}")
        if self.per_class < 2 or self.ms_inputs < 2:
            raise ConfigError("per_class and ms_inputs must be at least 2")

    @property
    def is_game(self) -> bool:
        from saelab.boardgame import lm

        return self.model in lm.GAMES or (bool(self.model) and
                                          (Path(self.model) / "training.json").exists())


@dataclass
class ConceptData:
    """Everything the four evaluations read, collected once per model."""

    model: str
    hook: str
    probing_sets: dict[str, LabelledSet]
    cone_sets: dict[str, LabelledSet]
    ms_inputs: InputActivations
    ms_embeddings: Tensor
    embedder: str
    words: absorption.WordData | None
    skipped: dict[str, str] = field(default_factory=dict)  # evaluation -> why it cannot run

    @property
    def all_token_acts(self) -> Tensor:
        return torch.cat([s.inputs.acts_TD for s in self.probing_sets.values()])


class Progress(StageProgress):
    """The concept suite's progress lines (``[concepts 12.3s] …``) on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__("concepts", enabled)

    def stage(self, text: str) -> None:
        self.say(text)


# ---------------------------------------------------------------------------- collection


def collect(cfg: ConceptSuiteConfig, progress: Progress | None = None) -> ConceptData:
    """Run the model once over every labelled input the selected evaluations need."""
    cfg.validate()
    progress = progress or Progress(False)
    return _collect_game(cfg, progress) if cfg.is_game else _collect_text(cfg, progress)


def _collect_game(cfg: ConceptSuiteConfig, progress: Progress) -> ConceptData:
    from saelab.boardgame import lm
    from saelab.boardgame.properties import properties_for
    from saelab.evals import boardgame

    game = cfg.model if cfg.model in lm.GAMES else lm.load_game_lm(cfg.model)[1]
    board_cfg = boardgame.BoardEvalConfig(game=game, model="" if cfg.model in lm.GAMES
                                          else cfg.model, layer=cfg.layer,
                                          train_games=cfg.train_games,
                                          test_games=cfg.test_games, seed=cfg.seed, probe=False)
    progress.stage(f"playing {cfg.train_games}+{cfg.test_games} {game} games and reading the "
                   "residual stream")
    data = boardgame.collect_board_data(board_cfg)
    acts = torch.cat([data.train.acts_PD, data.test.acts_PD])
    is_test = torch.cat([torch.zeros(data.train.acts_PD.shape[0], dtype=torch.bool),
                         torch.ones(data.test.acts_PD.shape[0], dtype=torch.bool)])
    inputs = InputActivations.one_token_each(acts)
    first = properties_for(game)[0]
    labels = torch.cat([data.train.labels[first.name], data.test.labels[first.name]])
    cone_set = LabelledSet(first.name, inputs, labels, first.cell_names, is_test,
                           f"{game} {first.name} cells")
    squares = set(cfg.board_squares)
    keep = [i for i, c in enumerate(first.cell_names) if c.split("@")[-1] in squares]
    if not keep:
        raise ConfigError(f"board_squares {cfg.board_squares} name no cell of {first.name}; "
                          "use square names such as d4")
    probe_set = LabelledSet(first.name, inputs, labels[:, keep],
                            tuple(first.cell_names[i] for i in keep), is_test,
                            f"{game} {first.name} cells on {sorted(squares)}")
    test_rows = is_test.nonzero().flatten()
    pick = _sample(test_rows, cfg.ms_inputs, cfg.seed)
    return ConceptData(
        f"{data.model} layer {data.layer}", f"transformer.h.{data.layer}",
        {first.name: probe_set}, {first.name: cone_set}, inputs.subset(pick),
        labels[pick].float(), f"one-hot {first.name} state", None,
        {"absorption": "needs a text model's vocabulary of words (first-letter task)"})


def _sample(rows: Tensor, n: int, seed: int) -> Tensor:
    if len(rows) <= n:
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return rows[order[:n]].sort().values


def _collect_text(cfg: ConceptSuiteConfig, progress: Progress) -> ConceptData:
    from saelab.models.hf import packaged_minilm_path
    from saelab.text.tasks import text_task

    hook = cfg.hook or DEFAULT_TEXT_HOOK
    progress.stage(f"loading {cfg.model or 'the packaged MiniLM'}")
    loaded = load_text_model(cfg.model)
    minilm = str(packaged_minilm_path())
    same_embedder = str(Path(loaded.name).resolve()) == str(Path(minilm).resolve()) \
        if Path(loaded.name).exists() else False
    sets: dict[str, LabelledSet] = {}
    texts: list[str] = []
    embeddings = []
    for name in cfg.text_tasks:
        task = text_task(name).subsample(cfg.per_class, cfg.seed)
        inputs, emb = text_activations(loaded.model, loaded.tokenizer, hook, task.texts,
                                       cfg.max_length, embed=same_embedder,
                                       progress=progress.counter(f"{name} texts"))
        sets[name] = LabelledSet(name, inputs, labels_one_hot(task.labels, len(task.classes)),
                                 task.classes, None, task.source)
        texts += task.texts
        if emb is not None:
            embeddings.append(emb)
    all_inputs = _concat_inputs([s.inputs for s in sets.values()])
    pick = _sample(torch.arange(all_inputs.n_inputs), cfg.ms_inputs, cfg.seed)
    if same_embedder:
        ms_embeddings = torch.cat(embeddings)[pick]
    else:
        progress.stage("embedding the MS texts with the packaged MiniLM")
        embedder = load_text_model("")
        _, ms_emb = text_activations(embedder.model, embedder.tokenizer, "encoder.layer.0",
                                     [texts[i] for i in pick], cfg.max_length)
        assert ms_emb is not None
        ms_embeddings = ms_emb
    words = None
    skipped: dict[str, str] = {}
    if "absorption" in cfg.evals:
        progress.stage("reading the vocabulary's words for absorption")
        try:
            words = absorption.collect_words(cfg.absorption, hook=hook, loaded=loaded)
        except ValueError as err:
            skipped["absorption"] = str(err)
    return ConceptData(loaded.name, hook, sets, sets, all_inputs.subset(pick), ms_embeddings,
                       "packaged MiniLM sentence embedding", words, skipped)


def _concat_inputs(parts: list[InputActivations]) -> InputActivations:
    offsets = [parts[0].offsets]
    for p in parts[1:]:
        offsets.append(p.offsets[1:] + offsets[-1][-1])
    return InputActivations(torch.cat([p.acts_TD for p in parts]), torch.cat(offsets))


# ---------------------------------------------------------------------------- the suite


@dataclass
class SAEConcepts(JsonResult):
    """All concept results of one SAE (an evaluation not run or not applicable is None, with
    the reason in ``skipped``)."""

    sae: str
    model: str
    hook: str
    d_sae: int
    l0: float
    absorption: absorption.AbsorptionResult | None
    sparse_probing: sparse_probing.SparseProbingResult | None
    monosemanticity: monosemanticity.MonosemanticityResult | None
    concept_cones: concept_cones.ConeResult | None
    skipped: dict[str, str]
    config: dict[str, Any]


def run_suite(saes: dict[str, SAE], cfg: ConceptSuiteConfig, data: ConceptData | None = None,
              progress: Progress | None = None) -> dict[str, SAEConcepts]:
    """Every selected evaluation of every named SAE on one model."""
    progress = progress or Progress(False)
    data = data or collect(cfg, progress)
    skipped = {k: v for k, v in data.skipped.items() if k in cfg.evals}
    results: dict[str, dict[str, Any]] = {name: {} for name in saes}
    if "absorption" in cfg.evals and data.words is not None:
        progress.stage(f"absorption: {len(data.words.words)} words, {len(saes)} SAE(s)")
        for name, r in absorption.run(saes, cfg.absorption, data.words).items():
            results[name]["absorption"] = r
    if "sparse_probing" in cfg.evals:
        progress.stage(f"sparse probing: {list(data.probing_sets)}")
        for name, p in sparse_probing.run(saes, data.probing_sets, cfg.probing).items():
            results[name]["sparse_probing"] = p
    if "monosemanticity" in cfg.evals:
        progress.stage(f"monosemanticity: {data.ms_inputs.n_inputs} inputs")
        for name, m in monosemanticity.run(saes, data.ms_inputs, data.ms_embeddings,
                                           cfg.monosemanticity, data.embedder).items():
            results[name]["monosemanticity"] = m
    if "concept_cones" in cfg.evals:
        progress.stage(f"concept cones: {list(data.cone_sets)}")
        for name, c in concept_cones.run(saes, data.cone_sets, cfg.cones).items():
            results[name]["concept_cones"] = c
    acts = data.all_token_acts
    return {name: SAEConcepts(name, data.model, data.hook, sae.cfg.d_sae, sae_l0(sae, acts),
                              results[name].get("absorption"),
                              results[name].get("sparse_probing"),
                              results[name].get("monosemanticity"),
                              results[name].get("concept_cones"), skipped, to_dict(cfg))
            for name, sae in saes.items()}


# ---------------------------------------------------------------------------- comparison

COLUMNS = {
    "l0": "mean active latents per token on the suite's inputs",
    "absorption": "mean absorption fraction over letters (lower is better)",
    "full_absorption": "mean full-absorption rate over letters (lower is better)",
    "probe_k1": "sparse-probing held-out accuracy, k = 1 (balanced, chance 0.5)",
    "probe_k20": "sparse-probing held-out accuracy, k = 20",
    "full_probe": "logistic probe on all raw dimensions, same data",
    "ms_latents": "mean monosemanticity score of the SAE's latents",
    "ms_neurons": "mean monosemanticity score of the layer's raw neurons",
    "cone_containment": "mean 1 − NNLS residual of CBM directions in the top-s decoder cone",
    "cone_geometric": "mean best cosine of a decoder atom with each CBM direction",
    "cone_semantic": "mean held-out AUC of the best-cosine latent for its concept",
}


def summary_row(r: SAEConcepts) -> dict[str, float | str]:
    """One flat row of the comparison table (columns: :data:`COLUMNS`)."""
    nan = math.nan
    sp = r.sparse_probing
    cones = list(r.concept_cones.sets.values()) if r.concept_cones else []
    return {
        "sae": r.sae, "l0": r.l0,
        "absorption": r.absorption.absorption_fraction_mean if r.absorption else nan,
        "full_absorption": r.absorption.full_absorption_mean if r.absorption else nan,
        "probe_k1": sp.mean_sparse.get("1", nan) if sp else nan,
        "probe_k20": sp.mean_sparse.get("20", nan) if sp else nan,
        "full_probe": sp.mean_full_probe if sp else nan,
        "ms_latents": r.monosemanticity.latents.mean if r.monosemanticity else nan,
        "ms_neurons": r.monosemanticity.neurons.mean if r.monosemanticity else nan,
        "cone_containment": float(np.nanmean([c.containment for c in cones])) if cones else nan,
        "cone_geometric": float(np.nanmean([c.geometric_alignment for c in cones]))
        if cones else nan,
        "cone_semantic": float(np.nanmean([c.semantic_alignment for c in cones]))
        if cones else nan,
    }


def summary_rows(results: dict[str, SAEConcepts]) -> list[dict[str, float | str]]:
    return [summary_row(r) for r in results.values()]


def format_table(rows: list[dict[str, float | str]]) -> str:
    """Plain-text table; ``nan`` marks a metric that is undefined or was not run."""
    keys = ["sae", *COLUMNS]
    width = max([len(str(r["sae"])) for r in rows] + [3])
    header = "sae".ljust(width) + "".join(f" {k:>16}" for k in keys[1:])
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = [f" {float(r[k]):>16.3f}" for k in keys[1:]]
        lines.append(str(r["sae"]).ljust(width) + "".join(cells))
    return "\n".join(lines)


def plot_comparison(rows: list[dict[str, float | str]], path: str | Path) -> Path:
    """Grouped bars per SAE: absorption, sparse probing (k=1, k=20, full probe), MS (latents vs
    neurons) and cones (containment, geometric, semantic); undefined metrics are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("absorption (lower is better)", ("absorption", "full_absorption")),
              ("sparse probing accuracy", ("probe_k1", "probe_k20", "full_probe")),
              ("monosemanticity score", ("ms_latents", "ms_neurons")),
              ("concept cones", ("cone_containment", "cone_geometric", "cone_semantic")))
    names = [str(r["sae"]) for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [float(r[key]) for r in rows]
            ax.bar(np.arange(len(rows)) + i * width, np.nan_to_num(values), width, label=key)
        ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, names, rotation=45, ha="right",
                      fontsize=7)
        ax.set_title(title, fontsize=9)
        if all(math.isnan(float(r[key])) for r in rows for key in keys):
            ax.text(0.5, 0.5, "undefined or not run\n(see the JSON reasons)", ha="center",
                    va="center", transform=ax.transAxes, fontsize=8)
        else:
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
