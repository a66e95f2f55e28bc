"""Board-game evaluation of SAEs: coverage and board reconstruction (Karvonen et al. 2024).

Activations are the residual stream of a game language model (Othello or chess) at one layer.
Every board-state property cell (``mine@d4``, ``N@f3``) is a binary label per position. A latent
f with maximum activation m_f (over the training split) acts as a classifier at threshold
fraction t: it says "yes" where f > t·m_f, for t ∈ {0, 0.1, …, 1.0}.

- **Counts** (per t, latent, cell) come from one sparse-by-dense matrix product: the firing
  matrix (positions × latents) transposed times the label matrix (positions × cells).
- **Coverage** (per property) = max over t of the mean over cells of the best latent's F1. The
  threshold and each cell's latent are chosen on the *training* split of games; we report that
  in-sample number (the paper's definition) and the same classifiers scored on *held-out* games.
- **Feature labels**: at t, latent f is labelled with cell φ when precision ≥ 0.95 and TP ≥ 10
  on the training split.
- **Board reconstruction**: predict a position's cells as the OR of the label sets of the
  latents firing above t; score = micro-F1 over all (position, cell) pairs. t is chosen on the
  training split and the score reported on held-out games. (The reference implementation picks
  this threshold on its test split itself; ``reconstruction_f1_test_best`` is that number.)
- **Paper denominators**: ``coverage_*_paper`` divide the summed best F1 by the reference
  code's cell count, never-true cells counted as 0 (formulas in :mod:`saelab.metrics.board`).
- **Chess** is scored at the first 20 ``.`` characters of each game, and each latent's
  maximum m_f is taken over every character of the training games, as in the paper.

A linear probe per property (independent logistic regression per cell, fit on the training
split) is the baseline; running the same pipeline on the random-initialised model is the control.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.boardgame import chess_games, lm, othello
from saelab.boardgame.properties import (
    chess_positions,
    group_members,
    label_all,
    othello_positions,
    properties_for,
)
from saelab.config import ConfigError, option, to_dict
from saelab.io import atomic_write_json
from saelab.metrics import board as board_metrics
from saelab.metrics.core import CoreMetricsAccumulator
from saelab.training.logging import StageProgress

TRAIN_GAMES_SEED = 2_000_000  # evaluation games never overlap the LM's training games
TEST_GAMES_SEED = 3_000_000


@dataclass
class BoardEvalConfig:
    """Options of the board-game evaluation."""

    game: str = option("othello", "game: othello or chess")
    model: str = option("", "game LM folder; empty = the shipped model of the game")
    layer: int = option(-1, "residual stream after this block (0-based); -1 = the model's default")
    random_init: bool = option(False, "use the random-initialised control of the model")
    train_games: int = option(500, "games whose positions choose thresholds, latents and labels")
    test_games: int = option(500, "held-out games the scores are reported on")
    seed: int = option(0, "seed of the evaluation games")
    n_thresholds: int = option(11, "threshold fractions t = 0, 1/(n-1), …, 1 of each latent's max")
    min_precision: float = option(0.95, "a feature label needs at least this precision")
    min_true_positives: int = option(10, "a feature label needs at least this many true positives")
    probe: bool = option(True, "also fit the linear-probe baseline")
    probe_steps: int = option(400, "linear probe: Adam steps of 1024 positions")
    batch_size: int = option(4096, "positions per SAE forward pass")
    chess_positions_per_game: int = option(20, "chess: score the first N '.' characters of "
                                           "each game (the paper: 20); 0 = every '.'")
    threshold_max: str = option("all", "where each latent's maximum (the threshold scale) is "
                                "taken: 'all' = every position of the training games (chess: "
                                "every character, as the paper), 'scored' = scored positions")
    progress: bool = option(True, "print progress lines (what, rate, ETA) to stderr")

    def validate(self) -> None:
        if self.game not in lm.GAMES:
            raise ConfigError(f"unknown game {self.game!r}; choose one of {list(lm.GAMES)}")
        if self.threshold_max not in ("all", "scored"):
            raise ConfigError(f"threshold_max must be 'all' or 'scored', got "
                              f"{self.threshold_max!r}")
        if self.train_games < 1 or self.test_games < 1:
            raise ConfigError("train_games and test_games must be at least 1")
        if self.n_thresholds < 2:
            raise ConfigError("n_thresholds must be at least 2 (t = 0 and t = 1)")

    def fractions(self) -> list[float]:
        return [i / (self.n_thresholds - 1) for i in range(self.n_thresholds)]


# ---------------------------------------------------------------------------- activations + labels


@dataclass
class Split:
    """Activations at the scored positions of a set of games and their property labels;
    ``max_acts_PD`` holds the positions where latent maxima are taken when they differ from
    the scored ones (chess: every character)."""

    acts_PD: Tensor
    labels: dict[str, Tensor]  # property name -> (P, cells) bool
    n_games: int
    max_acts_PD: Tensor | None = None


@dataclass
class BoardData:
    game: str
    model: str
    layer: int
    random_init: bool
    train: Split
    test: Split


def default_layer(model: torch.nn.Module) -> int:
    """The layer used when none is given: two thirds of the way up (block 2 of 4, 3 of 6)."""
    n_layer = int(lm.model_config(model).n_layer)
    return max(0, math.ceil(2 * n_layer / 3) - 1)


def collect_board_data(cfg: BoardEvalConfig, progress: StageProgress | None = None
                       ) -> BoardData:
    """Generate train and test games, run the LM, keep the scored positions and their labels."""
    cfg.validate()
    progress = progress or StageProgress("board", cfg.progress)
    source = cfg.model or cfg.game
    model, game = lm.load_game_lm(source, random_init=cfg.random_init)
    if game != cfg.game:
        raise ConfigError(f"model {source} is a {game} model but game={cfg.game!r}; "
                          f"pass --game {game}")
    layer = default_layer(model) if cfg.layer < 0 else cfg.layer
    settings = _chess_settings(source)
    per_game = cfg.chess_positions_per_game
    splits = []
    for split, n_games, seed in (("training", cfg.train_games, TRAIN_GAMES_SEED),
                                 ("test", cfg.test_games, TEST_GAMES_SEED)):
        start = time.perf_counter()
        progress.say(f"{split} split: playing {n_games} {game} games, labelling the board, "
                     f"reading the residual stream after block {layer}")
        splits.append(game_split(model, game, layer, n_games, seed + cfg.seed, settings,
                                 per_game, cfg.threshold_max == "all",
                                 progress.counter(f"{split} split: labelling chess positions",
                                                  "positions")))
        took = time.perf_counter() - start
        progress.say(f"{split} split: {splits[-1].acts_PD.shape[0]} positions from {n_games} "
                     f"games in {took:.1f} s ({n_games / max(took, 1e-9):.0f} games/s)")
    return BoardData(game, str(source), layer, cfg.random_init, splits[0], splits[1])


def _chess_settings(source: str) -> dict[str, Any]:
    settings = lm.read_metadata(lm.model_folder(source)).get("settings", {})
    return {"max_chars": int(settings.get("max_chars", 256)),
            "greedy_prob": float(settings.get("greedy_prob", 0.8))}


def game_split(model: torch.nn.Module, game: str, layer: int, n_games: int, seed: int,
               chess_settings: dict[str, Any] | None = None,
               chess_per_game: int = 0, max_over_all: bool = True,
               report: Callable[[int, int], None] | None = None) -> Split:
    """Activations and labels at the scored positions of ``n_games`` seeded games: every move
    of the first 59 (Othello), the first ``chess_per_game`` ``.`` characters (chess; 0 = all).
    With ``max_over_all``, chess also keeps the activations at every character of the games
    (where latent maxima are taken)."""
    max_acts_PD = None
    if game == "othello":
        o_games = othello.random_games(n_games, seed)
        tokens = o_games.tokens()[:, :othello.MAX_MOVES - 1]
        index = othello_positions(o_games, othello.MAX_MOVES - 1)
        games: Any = o_games
    else:
        games = chess_games.random_games(n_games, seed, **(chess_settings or {}))
        tokens = games.tokens
        index = chess_positions(games, chess_per_game)
    acts = lm.residual_stream(model, torch.from_numpy(tokens), layer)
    acts_PD = acts[torch.from_numpy(index[:, 0]), torch.from_numpy(index[:, 1])]
    if game == "chess" and max_over_all:
        inside = torch.arange(tokens.shape[1])[None, :] < torch.from_numpy(games.lengths)[:, None]
        max_acts_PD = acts[inside].contiguous()
    labels = {name: torch.from_numpy(value)
              for name, value in label_all(game, games, index, report).items()}
    return Split(acts_PD.contiguous(), labels, n_games, max_acts_PD)


# ---------------------------------------------------------------------------- sparse codes


@dataclass
class SparseCodes:
    """The nonzero codes of an SAE over P positions, as coordinate lists."""

    rows: Tensor
    cols: Tensor
    values: Tensor
    n_rows: int
    n_latents: int

    def max_per_latent(self) -> Tensor:
        out = torch.zeros(self.n_latents)
        return out.scatter_reduce(0, self.cols, self.values, reduce="amax")

    def firing(self, max_M: Tensor, fraction: float) -> Tensor:
        """Sparse ``(P, M)`` 0/1 matrix of codes above ``fraction`` of their latent's max; latents
        dead on the training split (max 0) never fire."""
        scale = max_M[self.cols]
        keep = (scale > 0) & (self.values > fraction * scale)
        index = torch.stack([self.rows[keep], self.cols[keep]])
        ones = torch.ones(index.shape[1])
        return torch.sparse_coo_tensor(index, ones, (self.n_rows, self.n_latents),
                                       check_invariants=False).coalesce()


@torch.no_grad()
def encode_sparse(sae: SAE, acts_PD: Tensor, batch_size: int = 4096,
                  accumulator: CoreMetricsAccumulator | None = None) -> SparseCodes:
    """Encode in batches and keep only the nonzero codes (optionally accumulating EV / L0)."""
    sae.eval()
    rows, cols, values = [], [], []
    for start in range(0, acts_PD.shape[0], batch_size):
        x = acts_PD[start:start + batch_size]
        codes = sae.encode(x)
        if accumulator is not None:
            accumulator.update(x, sae.decode(codes), codes)
        r, c = codes.nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        values.append(codes[r, c].float())
    return SparseCodes(torch.cat(rows), torch.cat(cols), torch.cat(values), acts_PD.shape[0],
                       sae.cfg.d_sae)


# ---------------------------------------------------------------------------- counts and scores


@dataclass
class Counts:
    """Confusion counts of every (latent, cell) pair at one threshold."""

    tp_MC: Tensor
    on_M: Tensor  # positions where the latent fires
    positives_C: Tensor  # positions where the cell is true

    @classmethod
    def of(cls, firing_PM: Tensor, labels_PC: Tensor) -> Counts:
        """Counts from a sparse 0/1 firing matrix (SAE codes) or a dense bool one (probe)."""
        labels = labels_PC.float()  # no copy when the caller already converted them
        if not firing_PM.is_sparse:
            fired = firing_PM.float()
            return cls(fired.t() @ labels, fired.sum(0), labels.sum(0))
        tp = torch.sparse.mm(firing_PM.t(), labels)
        on = torch.bincount(firing_PM._indices()[1], minlength=firing_PM.shape[1]).float()
        return cls(tp, on, labels.sum(0))

    def columns(self, start: int, stop: int) -> Counts:
        """The counts of cells ``start:stop`` (one property of a concatenated label matrix)."""
        return Counts(self.tp_MC[:, start:stop], self.on_M, self.positives_C[start:stop])

    def f1(self) -> Tensor:
        """2·TP / (2·TP + FP + FN) = 2·TP / (#fired + #positives)."""
        return board_metrics.cell_f1(self.tp_MC, self.on_M, self.positives_C)

    def feature_labels(self, min_precision: float, min_tp: int) -> Tensor:
        """``(M, C)`` bool: latent f is a high-precision classifier of cell φ."""
        precision = self.tp_MC / self.on_M[:, None].clamp_min(1)
        return (precision >= min_precision) & (self.tp_MC >= min_tp)


def predicted_board(firing_PM: Tensor, labels_MC: Tensor) -> Tensor:
    """``(P, C)`` bool: at each position, the OR of the label sets of the latents firing there
    (``labels_MC[f]`` is latent f's set: every cell it classifies at ≥ 0.95 precision)."""
    labelled_M = labels_MC.any(1)  # only latents with a label predict anything
    if not firing_PM.is_sparse:
        fired = firing_PM[:, labelled_M].float()
        return fired @ labels_MC[labelled_M].float() > 0
    index = firing_PM._indices()
    keep = labelled_M[index[1]]
    if not bool(keep.any()):
        return torch.zeros(firing_PM.shape[0], labels_MC.shape[1], dtype=torch.bool)
    labelled = torch.sparse_coo_tensor(index[:, keep], torch.ones(int(keep.sum())),
                                       firing_PM.shape, check_invariants=False)
    return torch.sparse.mm(labelled, labels_MC.float()) > 0


def reconstruction_counts(firing_PM: Tensor, labels_MC: Tensor, truth_PC: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell, summed over positions: (true positives, predicted, true) of the predicted
    board (:func:`predicted_board`) against ``truth_PC``; each ``(C,)``."""
    predicted = predicted_board(firing_PM, labels_MC)
    return ((predicted & truth_PC).sum(0).float(), predicted.sum(0).float(),
            truth_PC.sum(0).float())


def reconstruction_f1(firing_PM: Tensor, labels_MC: Tensor, truth_PC: Tensor) -> float:
    """Micro-F1 of the predicted board (OR of the firing latents' label sets) vs the truth,
    over every (position, cell) pair (whole-matrix counts: ~10× faster than per cell)."""
    predicted = predicted_board(firing_PM, labels_MC)
    return board_metrics.micro_f1(float(torch.count_nonzero(predicted & truth_PC)),
                                  float(torch.count_nonzero(predicted)),
                                  float(torch.count_nonzero(truth_PC)))


@dataclass
class PropertyScores:
    """Coverage and reconstruction of one SAE on one property (see the module docstring)."""

    property: str
    n_cells: int
    n_cells_scored: int  # cells true at least once in the training split
    coverage_train: float
    coverage_test: float
    coverage_threshold: float
    reconstruction_f1_train: float
    reconstruction_f1_test: float
    reconstruction_threshold: float
    n_feature_labels: int  # (latent, cell) labels at the reconstruction threshold
    n_labelled_latents: int
    n_cells_paper: int = 0  # the reference code's coverage denominator
    coverage_train_paper: float = 0.0  # in-sample, never-true cells as 0, paper denominator
    coverage_test_paper: float = 0.0  # the same classifiers on held-out games
    reconstruction_f1_test_best: float = 0.0  # threshold picked on the test games (the paper)
    # why reconstruction is what it is (held out, at reconstruction_threshold):
    reconstruction_precision_test: float = 0.0  # TP / #predicted (position, cell) pairs
    reconstruction_recall_test: float = 0.0  # TP / #true pairs
    #: recall of each cell class ("empty", "mine", ...: the name before "@"; empty when cells
    #: are not named class@square)
    reconstruction_recall_by_class: dict[str, float] = field(default_factory=dict)
    n_cells_labelled: int = 0  # cells in at least one latent's label set


@dataclass
class _Best:
    score: float = -1.0
    fraction: float = 0.0
    payload: Tensor = field(default_factory=lambda: torch.zeros(0))


def score_property(name: str, firing_train: dict[float, Tensor], firing_test: dict[float, Tensor],
                   labels_train_PC: Tensor, labels_test_PC: Tensor,
                   cfg: BoardEvalConfig, paper_cells: int = 0,
                   counts_train: dict[float, Counts] | None = None,
                   counts_test: dict[float, Counts] | None = None,
                   cell_names: tuple[str, ...] = ()) -> PropertyScores:
    """Pick thresholds, latents and labels on the training split; score both splits. The
    paper-style numbers use the denominator ``paper_cells`` (0 = every cell) and, for
    reconstruction, the best threshold on the test split. ``counts_*`` (per threshold) may be
    passed when already computed; ``cell_names`` (``class@square``) give the recall per class.
    The firing matrices are sparse 0/1 (SAE codes) or dense bool (:func:`dense_firing`)."""
    counts_train = counts_train or {t: Counts.of(f, labels_train_PC)
                                    for t, f in firing_train.items()}
    counts_test = counts_test or {t: Counts.of(f, labels_test_PC) for t, f in firing_test.items()}
    scored_C = labels_train_PC.any(0)
    denominator = paper_cells or int(labels_train_PC.shape[1])
    coverage, coverage_paper, recon = _Best(), _Best(), _Best()
    recon_test_best = 0.0
    for fraction, firing_PM in firing_train.items():
        counts = counts_train[fraction]
        best_f1_C, best_latent_C = counts.f1().max(0)
        score = board_metrics.coverage(best_f1_C, scored_C)
        if score > coverage.score:
            coverage = _Best(score, fraction, best_latent_C)
        paper = board_metrics.coverage_paper(best_f1_C, denominator)
        if paper > coverage_paper.score:
            coverage_paper = _Best(paper, fraction, best_latent_C)
        labels_MC = counts.feature_labels(cfg.min_precision, cfg.min_true_positives)
        f1 = reconstruction_f1(firing_PM, labels_MC, labels_train_PC)
        if f1 > recon.score:
            recon = _Best(f1, fraction, labels_MC)
        recon_test_best = max(recon_test_best, reconstruction_f1(
            firing_test[fraction], labels_MC, labels_test_PC))
    cells = torch.arange(labels_test_PC.shape[1])
    test_f1_C = counts_test[coverage.fraction].f1()[coverage.payload, cells]
    paper_test_f1_C = counts_test[coverage_paper.fraction].f1()[coverage_paper.payload, cells]
    both_C = scored_C & labels_test_PC.any(0)
    tp_C, predicted_C, truth_C = reconstruction_counts(firing_test[recon.fraction],
                                                       recon.payload, labels_test_PC)
    tp, predicted, truth = float(tp_C.sum()), float(predicted_C.sum()), float(truth_C.sum())
    return PropertyScores(
        property=name, n_cells=int(labels_train_PC.shape[1]), n_cells_scored=int(scored_C.sum()),
        coverage_train=coverage.score,
        coverage_test=board_metrics.coverage(test_f1_C, both_C),
        coverage_threshold=coverage.fraction,
        reconstruction_f1_train=recon.score,
        reconstruction_f1_test=board_metrics.micro_f1(tp, predicted, truth),
        reconstruction_threshold=recon.fraction,
        n_feature_labels=int(recon.payload.sum()),
        n_labelled_latents=int(recon.payload.any(1).sum()),
        n_cells_paper=denominator,
        coverage_train_paper=coverage_paper.score,
        coverage_test_paper=board_metrics.coverage_paper(paper_test_f1_C * scored_C, denominator),
        reconstruction_f1_test_best=recon_test_best,
        reconstruction_precision_test=tp / max(1.0, predicted),
        reconstruction_recall_test=tp / max(1.0, truth),
        reconstruction_recall_by_class=_recall_by_class(tp_C, truth_C, cell_names),
        n_cells_labelled=int(recon.payload.any(0).sum()),
    )


def _recall_by_class(tp_C: Tensor, truth_C: Tensor, cell_names: tuple[str, ...]
                     ) -> dict[str, float]:
    """Recall of the predicted board per cell class (the part of ``class@square`` names before
    the ``@``); {} without such names."""
    if len(cell_names) != tp_C.shape[0] or not all("@" in n for n in cell_names):
        return {}
    classes: dict[str, list[int]] = {}
    for i, name in enumerate(cell_names):
        classes.setdefault(name.split("@")[0], []).append(i)
    return {c: float(tp_C[idx].sum()) / max(1.0, float(truth_C[idx].sum()))
            for c, idx in classes.items()}


# ---------------------------------------------------------------------------- one SAE


@dataclass
class GroupScores:
    """The mean of per-property scores over a group the paper averages (chess ``strategy``)."""

    group: str
    properties: list[str]
    coverage_train: float
    coverage_test: float
    coverage_train_paper: float
    coverage_test_paper: float


@dataclass
class SAEBoardResult:
    """Board-game scores of one SAE, plus its reconstruction quality on the test positions."""

    name: str
    d_sae: int
    alive_latents: int  # fire at least once where the latent maxima are taken (training games)
    l0_test: float
    explained_variance_test: float
    scores: dict[str, PropertyScores]
    groups: dict[str, GroupScores] = field(default_factory=dict)
    architecture: str = ""
    sparsity: str = ""  # "k=16", "l1_coefficient=2" ... (what sets this SAE's L0)

    @property
    def dead_latents(self) -> int:
        return self.d_sae - self.alive_latents


def sparsity_setting(sae: SAE) -> str:
    """The hyperparameter that sets an SAE's L0, as ``name=value`` (k, or the coefficient)."""
    parts = [f"{key}={getattr(sae.cfg, key):g}" for key in ("k", "l1_coefficient",
                                                            "l0_coefficient")
             if isinstance(getattr(sae.cfg, key, None), int | float)]
    return ", ".join(parts[:1])


@torch.no_grad()
def max_activation(sae: SAE, acts_PD: Tensor, batch_size: int = 4096) -> Tensor:
    """``(M,)`` each latent's maximum code over ``acts_PD`` (0 for a latent that never fires)."""
    sae.eval()
    out = torch.zeros(sae.cfg.d_sae)
    for start in range(0, acts_PD.shape[0], batch_size):
        out = torch.maximum(out, sae.encode(acts_PD[start:start + batch_size]).float().amax(0))
    return out


def evaluate_sae(sae: SAE, data: BoardData, cfg: BoardEvalConfig, name: str = "sae"
                 ) -> SAEBoardResult:
    """Coverage and reconstruction of ``sae`` on ``data`` (activations from its layer)."""
    width = data.train.acts_PD.shape[1]
    if sae.cfg.d_in != width:
        raise ConfigError(f"SAE {name} expects d_in={sae.cfg.d_in} but layer {data.layer} of "
                          f"{data.model} has width {width}; use an SAE trained on this model")
    train = encode_sparse(sae, data.train.acts_PD, cfg.batch_size)
    accumulator = CoreMetricsAccumulator(sae.cfg.d_sae)
    test = encode_sparse(sae, data.test.acts_PD, cfg.batch_size, accumulator)
    core = accumulator.compute()
    max_M = train.max_per_latent()
    if data.train.max_acts_PD is not None:
        max_M = torch.maximum(max_M, max_activation(sae, data.train.max_acts_PD,
                                                    cfg.batch_size))
    fractions = cfg.fractions()
    firing_train = {t: train.firing(max_M, t) for t in fractions}
    firing_test = {t: test.firing(max_M, t) for t in fractions}
    paper_cells = {p.name: p.paper_denominator for p in properties_for(data.game)}
    cell_names = {p.name: p.cell_names for p in properties_for(data.game)}
    # one sparse product per threshold and split for all properties' cells together
    props = list(data.train.labels)
    bounds = np.cumsum([0] + [data.train.labels[p].shape[1] for p in props])
    all_train = torch.cat([data.train.labels[p] for p in props], 1).float()
    all_test = torch.cat([data.test.labels[p] for p in props], 1).float()
    counts_train = {t: Counts.of(f, all_train) for t, f in firing_train.items()}
    counts_test = {t: Counts.of(f, all_test) for t, f in firing_test.items()}
    scores = {}
    for p, start, stop in zip(props, bounds[:-1], bounds[1:], strict=True):
        scores[p] = score_property(
            p, firing_train, firing_test, data.train.labels[p], data.test.labels[p], cfg,
            paper_cells.get(p, 0), {t: c.columns(start, stop) for t, c in counts_train.items()},
            {t: c.columns(start, stop) for t, c in counts_test.items()}, cell_names.get(p, ()))
    groups = {g: _group_scores(g, members, scores)
              for g, members in group_members(data.game).items()
              if all(m in scores for m in members)}
    return SAEBoardResult(name, sae.cfg.d_sae, int((max_M > 0).sum()), core.l0,
                          core.explained_variance, scores, groups,
                          str(getattr(sae, "name", type(sae).__name__)),
                          sparsity_setting(sae))


def _group_scores(group: str, members: list[str], scores: dict[str, PropertyScores]
                  ) -> GroupScores:
    def avg(key: str) -> float:
        return statistics.fmean(getattr(scores[m], key) for m in members)
    return GroupScores(group, members, avg("coverage_train"), avg("coverage_test"),
                       avg("coverage_train_paper"), avg("coverage_test_paper"))


# ---------------------------------------------------------------------------- per-latent labels


@dataclass
class LatentBoardLabel:
    """The board-state cell a latent classifies best: chosen (threshold, property, cell) by F1
    on the training games, scored on held-out games."""

    latent: int
    property: str
    cell: str
    threshold: float  # fraction of the latent's training max
    f1_train: float
    f1_test: float
    precision_test: float
    recall_test: float


def latent_board_labels(sae: SAE, data: BoardData, cfg: BoardEvalConfig
                        ) -> list[LatentBoardLabel]:
    """For every latent alive on the training split, its best-matching board-state cell (the
    per-latent view of coverage: same classifiers, same thresholds, same splits)."""
    cell_names = {p.name: p.cell_names for p in properties_for(data.game)}
    train = encode_sparse(sae, data.train.acts_PD, cfg.batch_size)
    test = encode_sparse(sae, data.test.acts_PD, cfg.batch_size)
    max_M = train.max_per_latent()
    if data.train.max_acts_PD is not None:
        max_M = torch.maximum(max_M, max_activation(sae, data.train.max_acts_PD,
                                                    cfg.batch_size))
    M = sae.cfg.d_sae
    best_f1 = torch.full((M,), -1.0)
    best = {"prop": torch.zeros(M, dtype=torch.long), "cell": torch.zeros(M, dtype=torch.long),
            "t": torch.zeros(M)}
    props = list(data.train.labels)
    for fraction in cfg.fractions():
        firing = train.firing(max_M, fraction)
        for j, prop in enumerate(props):
            f1_M, cell_M = Counts.of(firing, data.train.labels[prop]).f1().max(1)
            better = f1_M > best_f1
            best_f1 = torch.where(better, f1_M, best_f1)
            best["prop"][better], best["cell"][better] = j, cell_M[better]
            best["t"][better] = fraction
    alive = (max_M > 0) & (best_f1 > 0)
    out = []
    for fraction in sorted({float(t) for t in best["t"][alive]}):
        firing = test.firing(max_M, fraction)
        for j, prop in enumerate(props):
            pick = alive & (best["t"] == fraction) & (best["prop"] == j)
            if not pick.any():
                continue
            counts = Counts.of(firing, data.test.labels[prop])
            f1 = counts.f1()
            for latent in pick.nonzero().flatten().tolist():
                cell = int(best["cell"][latent])
                tp = float(counts.tp_MC[latent, cell])
                out.append(LatentBoardLabel(
                    latent, prop, cell_names[prop][cell], fraction, float(best_f1[latent]),
                    float(f1[latent, cell]), tp / max(1.0, float(counts.on_M[latent])),
                    tp / max(1.0, float(counts.positives_C[cell]))))
    return sorted(out, key=lambda lab: lab.latent)


# ---------------------------------------------------------------------------- linear probe


@dataclass
class ProbeScores:
    """Held-out scores of a logistic-regression probe of one property."""

    property: str
    mean_cell_f1: float  # comparable to coverage_test
    micro_f1: float  # comparable to reconstruction_f1_test
    accuracy: float
    #: the linear ceiling of board reconstruction: the probe's per-cell probabilities scored as
    #: if they were latents (thresholds and 0.95-precision labels chosen on the training
    #: games), held out; what an SAE whose latents were the best linear cell detectors gets
    reconstruction_f1_as_latents: float = 0.0
    reconstruction_f1_as_latents_best: float = 0.0  # threshold picked on the test games
    n_cells_labelled_as_latents: int = 0


def fit_probe(acts_PD: Tensor, labels_PC: Tensor, steps: int = 400, seed: int = 0,
              batch_size: int = 1024, lr: float = 0.02) -> torch.nn.Module:
    """Logistic regression per cell on standardised activations (mini-batch Adam, learning
    rate decaying linearly to 0)."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = acts_PD.mean(0), acts_PD.std(0).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):  # the initial weights come from `seed` too
        torch.manual_seed(seed)
        linear = torch.nn.Linear(acts_PD.shape[1], labels_PC.shape[1])
    probe = torch.nn.Sequential(_Standardise(mean, std), linear)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    targets = labels_PC.float()
    for _ in range(steps):
        rows = torch.randint(0, acts_PD.shape[0], (batch_size,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(acts_PD[rows]),
                                                                    targets[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return probe.eval()


class _Standardise(torch.nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@torch.no_grad()
def probe_scores(name: str, probe: torch.nn.Module, acts_PD: Tensor, labels_PC: Tensor
                 ) -> ProbeScores:
    predicted = probe(acts_PD) > 0
    tp_C = (predicted & labels_PC).sum(0).float()
    denom_C = (predicted.sum(0) + labels_PC.sum(0)).float()
    present = labels_PC.any(0)
    cell_f1 = (2 * tp_C / denom_C.clamp_min(1))[present]
    return ProbeScores(name, float(cell_f1.mean()) if present.any() else 0.0,
                       float(2 * tp_C.sum() / denom_C.sum().clamp_min(1)),
                       float((predicted == labels_PC).float().mean()))


def dense_firing(codes_PM: Tensor, max_M: Tensor, fraction: float) -> Tensor:
    """Dense ``(P, M)`` bool: where dense codes exceed ``fraction`` of their latent's max (the
    dense form of :meth:`SparseCodes.firing`)."""
    return (max_M > 0) & (codes_PM > fraction * max_M)


@torch.no_grad()
def probe_as_latents(name: str, probe: torch.nn.Module, train: Split, test: Split,
                     cfg: BoardEvalConfig, cell_names: tuple[str, ...] = ()) -> PropertyScores:
    """Score the probe's per-cell probabilities exactly as SAE latents are scored (one
    "latent" per cell, thresholds t·max, labels at ≥ 0.95 precision and ≥ 10 TP on the
    training games): the reconstruction a dictionary of the best linear cell detectors would
    reach on this model and layer."""
    codes_train = torch.sigmoid(probe(train.acts_PD))
    codes_test = torch.sigmoid(probe(test.acts_PD))
    max_M = codes_train.amax(0)
    fractions = cfg.fractions()
    return score_property(name, {t: dense_firing(codes_train, max_M, t) for t in fractions},
                          {t: dense_firing(codes_test, max_M, t) for t in fractions},
                          train.labels[name], test.labels[name], cfg, cell_names=cell_names)


def probe_baseline(data: BoardData, cfg: BoardEvalConfig) -> dict[str, ProbeScores]:
    """Fit one probe per property on the training split; score it on the test split, as a
    classifier and as latents (:func:`probe_as_latents`)."""
    cell_names = {p.name: p.cell_names for p in properties_for(data.game)}
    out = {}
    for name, labels in data.train.labels.items():
        probe = fit_probe(data.train.acts_PD, labels, cfg.probe_steps, cfg.seed)
        latents = probe_as_latents(name, probe, data.train, data.test, cfg,
                                   cell_names.get(name, ()))
        out[name] = dataclasses.replace(
            probe_scores(name, probe, data.test.acts_PD, data.test.labels[name]),
            reconstruction_f1_as_latents=latents.reconstruction_f1_test,
            reconstruction_f1_as_latents_best=latents.reconstruction_f1_test_best,
            n_cells_labelled_as_latents=latents.n_cells_labelled)
    return out


# ---------------------------------------------------------------------------- the report


@dataclass
class BoardEvalResult:
    """All SAEs evaluated on one (game, model, layer), with the probe baseline."""

    game: str
    model: str
    layer: int
    random_init: bool
    n_train_positions: int
    n_test_positions: int
    saes: list[SAEBoardResult]
    probe: dict[str, ProbeScores] | None
    config: BoardEvalConfig

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = to_dict(self.config)
        return data

    def write(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_dict())


def run(saes: dict[str, SAE], cfg: BoardEvalConfig, data: BoardData | None = None
        ) -> BoardEvalResult:
    """Evaluate named SAEs on one (game, model, layer); the activations are collected once."""
    progress = StageProgress("board" + (" random-init" if cfg.random_init else ""),
                             cfg.progress)
    data = data or collect_board_data(cfg, progress)
    results = []
    report = progress.counter("scoring SAEs", "SAEs", interval=0.0)
    progress.say(f"scoring {len(saes)} SAE(s) on {data.train.acts_PD.shape[0]} + "
                 f"{data.test.acts_PD.shape[0]} positions, {len(data.train.labels)} properties, "
                 f"{cfg.n_thresholds} thresholds")
    for name, sae in saes.items():
        results.append(evaluate_sae(sae, data, cfg, name))
        report(len(results), len(saes))
    if cfg.probe:
        progress.say(f"fitting the linear-probe baseline ({len(data.train.labels)} properties, "
                     f"{cfg.probe_steps} steps each)")
    probe = probe_baseline(data, cfg) if cfg.probe else None
    return BoardEvalResult(data.game, data.model, data.layer, data.random_init,
                           int(data.train.acts_PD.shape[0]), int(data.test.acts_PD.shape[0]),
                           results, probe, cfg)


def summary_rows(result: BoardEvalResult) -> list[dict[str, Any]]:
    """One flat row per (SAE or probe, property), for tables."""
    rows: list[dict[str, Any]] = []
    for sae in result.saes:
        for s in sae.scores.values():
            rows.append({"sae": sae.name, "property": s.property, "l0": sae.l0_test,
                         "ev": sae.explained_variance_test, "coverage": s.coverage_test,
                         "coverage_train": s.coverage_train,
                         "reconstruction": s.reconstruction_f1_test})
    for p in (result.probe or {}).values():
        rows.append({"sae": "linear probe", "property": p.property, "l0": math.nan,
                     "ev": math.nan, "coverage": p.mean_cell_f1, "coverage_train": math.nan,
                     "reconstruction": p.micro_f1})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of summary rows."""
    header = f"{'sae':<22} {'property':<20} {'L0':>7} {'EV':>6} {'cov(test)':>9} " \
             f"{'cov(train)':>10} {'recon F1':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['sae']:<22} {r['property']:<20} {r['l0']:>7.1f} {r['ev']:>6.3f} "
                     f"{r['coverage']:>9.3f} {r['coverage_train']:>10.3f} "
                     f"{r['reconstruction']:>8.3f}")
    return "\n".join(lines)


def plot_comparison(results: list[BoardEvalResult], path: str | Path,
                    labels: list[str] | None = None) -> Path:
    """Grouped bars: held-out coverage and reconstruction per property for every SAE (one
    panel per metric); the probe's scores are drawn as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [("random " if r.random_init else "") + r.model for r in results]
    entries = [(f"{lab}: {s.name}" if len(results) > 1 else s.name, s)
               for lab, r in zip(labels, results, strict=True) for s in r.saes]
    props = list(entries[0][1].scores) if entries else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / max(1, len(entries))
    for ax, metric, probe_key in ((axes[0], "coverage_test", "mean_cell_f1"),
                                  (axes[1], "reconstruction_f1_test", "micro_f1")):
        for i, (name, sae) in enumerate(entries):
            values = [getattr(sae.scores[p], metric) for p in props]
            ax.bar(np.arange(len(props)) + i * width, values, width, label=name)
        for (label, result), style in zip(zip(labels, results, strict=True), ("--", ":", "-."),
                                          strict=False):
            _probe_lines(ax, result, props, probe_key, style,
                         f"probe ({label})" if len(results) > 1 else "linear probe")
        ax.set_xticks(np.arange(len(props)) + 0.4 - width / 2, props)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("F1 on held-out games")
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(names) / 4), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _probe_lines(ax: Any, result: BoardEvalResult, props: list[str], key: str, style: str,
                 label: str) -> None:
    """The probe's score of each property as a horizontal line across that property's bars."""
    for j, p in enumerate(props):
        if result.probe and p in result.probe:
            ax.hlines(getattr(result.probe[p], key), j - 0.1, j + 0.9, colors="k",
                      linestyles=style, label=label if j == 0 else None)
