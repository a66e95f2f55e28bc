"""Board-state interventions on an Othello LM (after Li et al. 2023's intervention experiment):
edit one square inside the model and check whether its predicted legal moves follow the edit.

A case is a position (after move t of a held-out game) and a square X holding a disc of the
player to move ("mine"). The edited board has X turned to "theirs"; its legal moves (same
player to move) must differ from the original board's, or the case is skipped. At the hooked
layer, at position t only:

- **SAE edit**: the latents labelled "X is mine" are zeroed and those labelled "X is theirs"
  clamped to their typical "on" value × ``strength`` (the mean code where the cell holds and
  the latent fires, on the training games), the SAE's error term kept. A cell's labelled latents
  are its best-F1 latent plus every latent with precision ≥ 0.95 and ≥ 10 true positives
  (firing = code > 0, training games), at most ``max_latents`` of them by F1.
- **probe edit**: the smallest change (least norm) that sets the logits of the linear probes
  for "X is mine" and "X is theirs" to their mean values on training positions where X is
  theirs (the step scaled by ``strength``).

**Errors** at a case: with N = |legal moves of the edited board|, the model's top-N predicted
squares are compared with that set; errors = the number of the top-N squares that are not legal
there (equal to the number of legal squares missed). ``errors_before`` is the unedited model
scored against the edited board, ``errors_after`` the edited model against it (0 = the model
fully follows the edit); ``errors_clean`` is the unedited model against the true board (how good
the model is at all). Li et al. report about 2.7 before vs 0.1–0.2 after on OthelloGPT (their
probe-based, multi-layer edit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.boardgame import othello
from saelab.config import ConfigError, option, to_dict
from saelab.evals.boardgame import Counts, encode_sparse, fit_probe, game_split
from saelab.models.hooks import splice
from saelab.steer.edits import LatentEdit
from saelab.steer.steering import edit_activation

TRAIN_SEED = 6_000_000  # games for labels, probes and "on" values
TEST_SEED = 7_000_000  # games the cases come from
MINE, THEIRS = 1, 2  # class blocks of the `board` property: empty, mine, theirs


@dataclass
class BoardInterventionConfig:
    """Options of the board-intervention evaluation."""

    layer: int = option(2, "residual stream after this block is edited")
    train_games: int = option(300, "games for latent labels, on-values and the probe")
    test_games: int = option(300, "games the cases are drawn from")
    cases: int = option(1500, "interventions scored (sampled from all valid cases)")
    strength: float = option(1.0, "scale of the 'on' value (SAE) / of the probe step")
    max_latents: int = option(4, "labelled latents used per cell at most")
    probe_steps: int = option(400, "Adam steps of the linear probe")
    batch_size: int = option(256, "games per forward pass")
    seed: int = option(0, "seed of the games and the case sample")

    def validate(self) -> None:
        if self.cases < 1 or self.train_games < 1 or self.test_games < 1:
            raise ConfigError("cases, train_games and test_games must be at least 1")


@dataclass
class Cases:
    """Positions and squares to edit, with the legal moves before and after the edit."""

    game: np.ndarray  # (C,)
    ply: np.ndarray  # (C,)
    square: np.ndarray  # (C,)
    legal_original: np.ndarray  # (C, 64) bool
    legal_edited: np.ndarray  # (C, 64) bool
    n_valid: int  # valid cases before sampling

    def __len__(self) -> int:
        return len(self.game)


def find_cases(games: othello.OthelloGames, n: int, seed: int, max_ply: int = 58) -> Cases:
    """Sample ``n`` (position, square) cases whose mine→theirs flip changes the legal moves."""
    rows = []
    for g, t in np.argwhere(games.moves[:, :max_ply + 1] >= 0):
        nb = bool(games.next_black[g, t])
        black, white = games.black[g, t], games.white[g, t]
        mine, theirs = (black, white) if nb else (white, black)
        before = othello.legal_moves(np.array([mine]), np.array([theirs]))[0]
        squares = np.flatnonzero(othello.unpack_bits(np.array([mine]))[0])
        bits = np.uint64(1) << squares.astype(np.uint64)
        after = othello.legal_moves(np.full(len(bits), mine) & ~bits,
                                    np.full(len(bits), theirs) | bits)
        for sq, legal in zip(squares, after, strict=True):
            if legal != 0 and legal != before:
                rows.append((g, t, sq, before, legal))
    if not rows:
        raise ValueError("no valid intervention cases; use more games")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(rows))[:n]
    chosen = [rows[i] for i in sorted(pick)]
    g_, t_, s_, b_, a_ = zip(*chosen, strict=True)
    return Cases(np.array(g_), np.array(t_), np.array(s_),
                 othello.unpack_bits(np.array(b_, dtype=np.uint64)),
                 othello.unpack_bits(np.array(a_, dtype=np.uint64)), len(rows))


def errors(logits_CV: Tensor, legal_C64: np.ndarray) -> np.ndarray:
    """Top-N errors (see the module docstring); logits over the 61 tokens, pad excluded."""
    scores = logits_CV[:, 1:].float().numpy()  # token 1..60 = PLAYABLE_SQUARES order
    square_scores = np.full((len(scores), 64), -np.inf)
    square_scores[:, list(othello.PLAYABLE_SQUARES)] = scores
    out = np.zeros(len(scores), dtype=np.int64)
    for i, (row, legal) in enumerate(zip(square_scores, legal_C64, strict=True)):
        n = int(legal.sum())
        top = np.argsort(-row, kind="stable")[:n]
        out[i] = int((~legal[top]).sum())
    return out


# ---------------------------------------------------------------------------- editors


EditFn = Callable[[Tensor, int], Tensor]  # (activations (B, D) at the edited positions, square)


@dataclass
class SAECellLatents:
    """Per board cell, the labelled latents and their 'on' values (training games)."""

    latents: dict[int, list[int]]  # cell -> latents
    on_value: dict[tuple[int, int], float]  # (cell, latent) -> mean code where both hold
    f1: dict[int, float]  # cell -> F1 of its best latent


@torch.no_grad()
def label_cells(sae: SAE, acts_PD: Tensor, board_PC: Tensor, max_latents: int,
                min_precision: float = 0.95, min_tp: int = 10) -> SAECellLatents:
    codes = encode_sparse(sae, acts_PD)
    firing = codes.firing(codes.max_per_latent(), 0.0)
    counts = Counts.of(firing, board_PC)
    f1 = counts.f1()
    labelled = counts.feature_labels(min_precision, min_tp)
    dense = torch.zeros(codes.n_rows, codes.n_latents)
    dense[codes.rows, codes.cols] = codes.values
    latents, on_value, best_f1 = {}, {}, {}
    for cell in range(board_PC.shape[1]):
        order = f1[:, cell].argsort(descending=True)
        chosen = [int(order[0])] + [int(j) for j in order[1:] if labelled[j, cell]]
        latents[cell] = chosen[:max_latents]
        best_f1[cell] = float(f1[order[0], cell])
        truth = board_PC[:, cell]
        for j in latents[cell]:
            values = dense[truth & (dense[:, j] > 0), j]
            on_value[(cell, j)] = float(values.mean()) if len(values) else 0.0
    return SAECellLatents(latents, on_value, best_f1)


def sae_editor(sae: SAE, cells: SAECellLatents, strength: float) -> EditFn:
    def edit(x_BD: Tensor, square: int) -> Tensor:
        mine, theirs = MINE * 64 + square, THEIRS * 64 + square
        edits = [LatentEdit(j, "zero") for j in cells.latents[mine]]
        edits += [LatentEdit(j, "clamp", strength * cells.on_value[(theirs, j)])
                  for j in cells.latents[theirs]]
        return edit_activation(sae, x_BD, edits, keep_error=True)
    return edit


@dataclass
class ProbeEditor:
    """Least-norm edits that set two probe logits (raw-activation space)."""

    weight_CD: Tensor
    bias_C: Tensor
    target: dict[int, tuple[float, float]]  # square -> (mine logit, theirs logit) targets
    strength: float

    def __call__(self, x_BD: Tensor, square: int) -> Tensor:
        rows = [MINE * 64 + square, THEIRS * 64 + square]
        a = self.weight_CD[rows]  # (2, D)
        current = x_BD @ a.T + self.bias_C[rows]  # (B, 2)
        goal = torch.tensor(self.target[square], dtype=x_BD.dtype)
        step = torch.linalg.solve(a @ a.T, (goal - current).T).T @ a  # (B, D)
        return x_BD + self.strength * step


@torch.no_grad()
def probe_editor(acts_PD: Tensor, board_PC: Tensor, steps: int, seed: int,
                 strength: float) -> tuple[ProbeEditor, Tensor]:
    """Fit the board probe and build its editor; also returns the probe (for its F1)."""
    with torch.enable_grad():
        probe = fit_probe(acts_PD, board_PC, steps, seed)
    assert isinstance(probe, nn.Sequential)
    mean, std = probe[0].mean, probe[0].std
    linear = probe[1]
    assert isinstance(mean, Tensor) and isinstance(std, Tensor) and isinstance(linear, nn.Linear)
    weight = linear.weight / std
    bias = linear.bias - weight @ mean
    logits = acts_PD @ weight.T + bias
    target = {}
    for square in range(64):
        where = board_PC[:, THEIRS * 64 + square]
        if where.any():
            target[square] = (float(logits[where, MINE * 64 + square].mean()),
                              float(logits[where, THEIRS * 64 + square].mean()))
        else:
            target[square] = (-5.0, 5.0)
    return ProbeEditor(weight, bias, target, strength), (logits > 0)


# ---------------------------------------------------------------------------- running


@dataclass
class InterventionScores:
    """Mean top-N errors over the cases for one editing method (see the module docstring)."""

    method: str
    n_cases: int
    errors_clean: float
    errors_before: float
    errors_after: float
    errors_after_vs_original: float
    full_success: float  # share of cases with 0 errors after the edit
    relative_change: float  # mean ‖x' − x‖ / ‖x‖ at the edited position
    cell_f1: float  # mean F1 on training games of the edited cells' detector (latent / probe)


@dataclass
class BoardInterventionResult:
    layer: int
    n_valid_cases: int
    scores: list[InterventionScores]
    config: BoardInterventionConfig
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = to_dict(self.config)
        return data


@torch.no_grad()
def _logits_at(model: nn.Module, tokens_GT: Tensor, ply: np.ndarray, hook: str,
               edit: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, Tensor]:
    """Logits at each row's position ``ply`` (and the relative activation change there)."""
    rows = torch.arange(tokens_GT.shape[0])
    pos = torch.from_numpy(ply)
    change = torch.zeros(tokens_GT.shape[0])

    def at_positions(x_BSD: Tensor) -> Tensor:
        if edit is None:
            return x_BSD
        x = x_BSD[rows, pos]
        new = edit(x)
        change.copy_((new - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12))
        out = x_BSD.clone()
        out[rows, pos] = new.to(out.dtype)
        return out

    with splice(model, hook, at_positions):
        logits = model(input_ids=tokens_GT).logits  # type: ignore[operator]
    return logits[rows, pos], change


def _for_square(editor: EditFn, square: int) -> Callable[[Tensor], Tensor]:
    return lambda x: editor(x, square)


def score_method(name: str, model: nn.Module, layer: int, tokens_GT: Tensor, cases: Cases,
                 editor: EditFn | None, cell_f1: float, batch_size: int) -> InterventionScores:
    """Run every case with ``editor`` (grouped by square) and average the errors."""
    hook = f"transformer.h.{layer}"
    clean = torch.zeros(len(cases), othello.VOCAB_SIZE)
    edited = torch.zeros_like(clean)
    change = torch.zeros(len(cases))
    for square in np.unique(cases.square):
        idx = np.flatnonzero(cases.square == square)
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            toks = tokens_GT[cases.game[part]]
            clean[part], _ = _logits_at(model, toks, cases.ply[part], hook, None)
            if editor is not None:
                edited[part], change[part] = _logits_at(model, toks, cases.ply[part], hook,
                                                        _for_square(editor, int(square)))
    after = edited if editor is not None else clean
    return InterventionScores(
        method=name, n_cases=len(cases),
        errors_clean=float(errors(clean, cases.legal_original).mean()),
        errors_before=float(errors(clean, cases.legal_edited).mean()),
        errors_after=float(errors(after, cases.legal_edited).mean()),
        errors_after_vs_original=float(errors(after, cases.legal_original).mean()),
        full_success=float((errors(after, cases.legal_edited) == 0).mean()),
        relative_change=float(change.mean()), cell_f1=cell_f1)


def run(model: nn.Module, saes: dict[str, SAE], cfg: BoardInterventionConfig
        ) -> BoardInterventionResult:
    """SAE edits for every SAE and the probe edit, on the same cases."""
    cfg.validate()
    model.eval()
    train = game_split(model, "othello", cfg.layer, cfg.train_games, TRAIN_SEED + cfg.seed)
    test_games = othello.random_games(cfg.test_games, TEST_SEED + cfg.seed)
    cases = find_cases(test_games, cfg.cases, cfg.seed)
    tokens = torch.from_numpy(test_games.tokens()[:, :othello.MAX_MOVES - 1])
    board = train.labels["board"]
    edited_cells = [c * 64 + int(s) for s in np.unique(cases.square) for c in (MINE, THEIRS)]
    scores = []
    probe, probe_pred = probe_editor(train.acts_PD, board, cfg.probe_steps, cfg.seed, cfg.strength)
    tp = (probe_pred & board).sum(0).float()
    probe_f1 = 2 * tp / (probe_pred.sum(0) + board.sum(0)).float().clamp_min(1)
    scores.append(score_method("linear probe", model, cfg.layer, tokens, cases, probe,
                               float(probe_f1[edited_cells].mean()), cfg.batch_size))
    for name, sae in saes.items():
        if sae.cfg.d_in != train.acts_PD.shape[1]:
            raise ConfigError(f"SAE {name} has d_in={sae.cfg.d_in}; layer {cfg.layer} has "
                              f"width {train.acts_PD.shape[1]}")
        cells = label_cells(sae, train.acts_PD, board, cfg.max_latents)
        f1 = float(np.mean([cells.f1[c] for c in edited_cells]))
        scores.append(score_method(f"SAE {name}", model, cfg.layer, tokens, cases,
                                   sae_editor(sae, cells, cfg.strength), f1, cfg.batch_size))
    return BoardInterventionResult(cfg.layer, cases.n_valid, scores, cfg)


def format_table(result: BoardInterventionResult) -> str:
    header = (f"{'method':<22} {'cases':>6} {'err clean':>9} {'err before':>10} "
              f"{'err after':>9} {'after vs orig':>13} {'0-error':>7} {'|Δx|/|x|':>8} "
              f"{'cell F1':>7}")
    lines = [header, "-" * len(header)]
    for s in result.scores:
        lines.append(f"{s.method:<22} {s.n_cases:>6} {s.errors_clean:>9.3f} "
                     f"{s.errors_before:>10.3f} {s.errors_after:>9.3f} "
                     f"{s.errors_after_vs_original:>13.3f} {s.full_success:>7.3f} "
                     f"{s.relative_change:>8.3f} {s.cell_f1:>7.3f}")
    return "\n".join(lines)
