"""Coverage, feature labels, board reconstruction and the probe baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saelab
from saelab.evals import boardgame as board_eval
from saelab.evals.boardgame import BoardEvalConfig, Counts, SparseCodes


def _sparse(codes_PM: torch.Tensor) -> SparseCodes:
    r, c = codes_PM.nonzero(as_tuple=True)
    return SparseCodes(r, c, codes_PM[r, c], codes_PM.shape[0], codes_PM.shape[1])


def test_counts_match_a_hand_computation() -> None:
    codes = torch.tensor([[1.0, 0.0], [0.5, 2.0], [0.0, 1.0], [0.2, 0.0]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)
    sparse = _sparse(codes)
    max_M = sparse.max_per_latent()
    assert max_M.tolist() == [1.0, 2.0]
    counts = Counts.of(sparse.firing(max_M, 0.0), labels)
    # latent 0 fires at positions 0, 1, 3; latent 1 at 1, 2
    assert counts.on_M.tolist() == [3.0, 2.0]
    assert counts.tp_MC.tolist() == [[2.0, 1.0], [1.0, 2.0]]
    assert counts.f1()[0, 0] == pytest.approx(2 * 2 / (3 + 2))
    assert counts.f1()[1, 1] == pytest.approx(1.0)
    high = Counts.of(sparse.firing(max_M, 0.4), labels)  # latent 0 above 0.4, latent 1 above 0.8
    assert high.on_M.tolist() == [2.0, 2.0]
    labels_MC = counts.feature_labels(min_precision=0.95, min_tp=2)
    assert labels_MC.tolist() == [[False, False], [False, True]]


def _planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of 3 cells and codes where latent c copies cell c (plus 5 noise latents)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, 3, generator=g) < 0.3
    noise = torch.rand(n, 5, generator=g) * (torch.rand(n, 5, generator=g) < 0.3)
    codes = torch.cat([labels.float() * (1 + torch.rand(n, 3, generator=g)), noise], dim=1)
    return codes, labels


def _score(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]
           ) -> board_eval.PropertyScores:
    cfg = BoardEvalConfig()
    tr, te = _sparse(train[0]), _sparse(test[0])
    max_M = tr.max_per_latent()
    firing_train = {t: tr.firing(max_M, t) for t in cfg.fractions()}
    firing_test = {t: te.firing(max_M, t) for t in cfg.fractions()}
    return board_eval.score_property("p", firing_train, firing_test, train[1], test[1], cfg)


def test_planted_latents_give_perfect_scores() -> None:
    scores = _score(_planted(400, 0), _planted(400, 1))
    assert scores.coverage_train == pytest.approx(1.0)
    assert scores.coverage_test == pytest.approx(1.0)
    assert scores.reconstruction_f1_test == pytest.approx(1.0)
    assert scores.n_labelled_latents == 3 and scores.n_cells_scored == 3


def test_choices_are_made_on_train_and_scored_on_test() -> None:
    train = _planted(400, 0)
    test_codes, test_labels = _planted(400, 1)
    # on held-out games the planted latents no longer track their cells
    shuffled = test_codes[:, :3][torch.randperm(400, generator=torch.Generator().manual_seed(2))]
    scores = _score(train, (torch.cat([shuffled, test_codes[:, 3:]], 1), test_labels))
    assert scores.coverage_train == pytest.approx(1.0)
    assert scores.coverage_test < 0.6
    assert scores.reconstruction_f1_train == pytest.approx(1.0)
    assert scores.reconstruction_f1_test < 0.6


def test_dead_latents_never_fire_on_test() -> None:
    train_codes = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    test_codes = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    max_M = _sparse(train_codes).max_per_latent()
    assert _sparse(test_codes).firing(max_M, 0.0)._nnz() == 0


def test_probe_learns_a_linear_property() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g)
    labels = torch.stack([x[:, 0] > 0.3, x[:, 1] + x[:, 2] < 0], dim=1)
    probe = board_eval.fit_probe(x[:2000], labels[:2000], steps=300)
    scores = board_eval.probe_scores("p", probe, x[2000:], labels[2000:])
    assert scores.accuracy > 0.97 and scores.micro_f1 > 0.95


@pytest.fixture(scope="module")
def tiny_othello_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from saelab.boardgame import lm

    cfg = lm.LMTrainConfig(game="othello", n_layer=2, d_model=32, n_head=2)
    folder = tmp_path_factory.mktemp("lm")
    lm.save_model(lm.build_model(cfg), folder, {"game": "othello", "command": "test",
                                                 "settings": {}})
    return str(folder)


def test_end_to_end_on_a_tiny_model(tiny_othello_lm: str, tmp_path) -> None:
    cfg = BoardEvalConfig(game="othello", model=tiny_othello_lm, layer=1, train_games=12,
                          test_games=12, probe_steps=20)
    data = board_eval.collect_board_data(cfg)
    assert data.train.acts_PD.shape == (12 * 59, 32)
    assert data.train.labels["mine_theirs"].shape == (12 * 59, 128)
    saes = {"topk": saelab.build(saelab.config_from_dict(
        {"architecture": "topk", "k": 4, "d_in": 32, "d_sae": 64}))}
    result = board_eval.run(saes, cfg, data)
    scores = result.saes[0].scores
    assert set(scores) == {"board", "mine_theirs", "legal_moves"}
    for s in scores.values():
        assert 0 <= s.coverage_test <= 1 and 0 <= s.reconstruction_f1_test <= 1
    assert result.saes[0].l0_test == pytest.approx(4.0)
    assert set(result.probe or {}) == {"board", "mine_theirs", "legal_moves"}
    result.write(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["saes"][0]["name"] == "topk"
    assert board_eval.plot_comparison([result], tmp_path / "r.png").stat().st_size > 1000
    wrong = {"w": saelab.build(saelab.config_from_dict(
        {"architecture": "topk", "k": 4, "d_in": 16, "d_sae": 64}))}
    with pytest.raises(ValueError, match="d_in=16"):
        board_eval.run(wrong, cfg, data)


def test_paper_denominator_counts_never_true_cells_as_zero() -> None:
    train, test = _planted(400, 0), _planted(400, 1)
    never = torch.zeros(400, 1, dtype=torch.bool)  # a 4th cell that is never true
    train = (train[0], torch.cat([train[1], never], 1))
    test = (test[0], torch.cat([test[1], never], 1))
    cfg = BoardEvalConfig()
    tr, te = _sparse(train[0]), _sparse(test[0])
    max_M = tr.max_per_latent()
    fire_tr = {t: tr.firing(max_M, t) for t in cfg.fractions()}
    fire_te = {t: te.firing(max_M, t) for t in cfg.fractions()}
    scores = board_eval.score_property("p", fire_tr, fire_te, train[1], test[1], cfg,
                                       paper_cells=6)
    assert scores.coverage_train == pytest.approx(1.0)  # ours: the never-true cell is left out
    assert scores.n_cells_scored == 3 and scores.n_cells_paper == 6
    assert scores.coverage_train_paper == pytest.approx(3 / 6)  # 3 perfect cells out of 6
    assert scores.coverage_test_paper == pytest.approx(3 / 6)
    assert scores.reconstruction_f1_test_best == pytest.approx(1.0)


def test_chess_thresholds_use_every_character(tmp_path) -> None:
    pytest.importorskip("chess")
    from saelab.boardgame import lm

    cfg_lm = lm.LMTrainConfig(game="chess", n_layer=1, d_model=16, n_head=2)
    lm.save_model(lm.build_model(cfg_lm), tmp_path, {"game": "chess", "command": "test",
                                                     "settings": {}})
    cfg = BoardEvalConfig(game="chess", model=str(tmp_path), layer=0, train_games=3,
                          test_games=3, probe=False, progress=False)
    data = board_eval.collect_board_data(cfg)
    per_game = 20
    assert data.train.acts_PD.shape[0] <= 3 * per_game
    assert data.train.max_acts_PD is not None
    assert data.train.max_acts_PD.shape[0] > 3 * 100  # every character, not only the dots
    sae = saelab.build(saelab.config_from_dict(
        {"architecture": "topk", "k": 1, "d_in": 16, "d_sae": 256}))
    result = board_eval.evaluate_sae(sae, data, cfg)
    every = board_eval.max_activation(sae, data.train.max_acts_PD)
    dots = board_eval.max_activation(sae, data.train.acts_PD)
    assert int((every > dots).sum()) > 0  # the maximum really comes from other characters
    # latents firing only between the dots are alive: their maxima were taken everywhere
    assert result.alive_latents == int((every > 0).sum()) > int((dots > 0).sum())
    assert set(result.groups) == {"strategy"}
    assert len(result.groups["strategy"].properties) == 16


def _firing(codes: torch.Tensor, cfg: BoardEvalConfig, max_M: torch.Tensor
            ) -> dict[float, torch.Tensor]:
    return {t: _sparse(codes).firing(max_M, t) for t in cfg.fractions()}


def test_reconstruction_predicts_each_latents_whole_label_set_and_scores_every_class() -> None:
    """Hand-built: latent 0 fires exactly on boards {empty@a1, mine@b1}, latent 1 on
    {theirs@a1, empty@b1}; position 5 ({mine@a1, theirs@b1}) has no latent firing."""
    names = ("empty@a1", "empty@b1", "mine@a1", "mine@b1", "theirs@a1", "theirs@b1")
    cells = {n: i for i, n in enumerate(names)}
    boards = [("empty@a1", "mine@b1")] * 3 + [("theirs@a1", "empty@b1")] * 2 \
        + [("mine@a1", "theirs@b1")]
    labels = torch.zeros(6, 6, dtype=torch.bool)
    for p, board in enumerate(boards):
        labels[p, [cells[c] for c in board]] = True
    codes = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2 + [[0.0, 0.0]])
    cfg = BoardEvalConfig(min_true_positives=2)
    max_M = _sparse(codes).max_per_latent()
    scores = board_eval.score_property("board", _firing(codes, cfg, max_M),
                                       _firing(codes, cfg, max_M), labels, labels, cfg,
                                       cell_names=names)
    # each latent is labelled with both cells it predicts at precision 1: 4 labels
    assert scores.n_feature_labels == 4 and scores.n_labelled_latents == 2
    assert scores.n_cells_labelled == 4
    # 10 of the 12 true (position, cell) pairs predicted, no false positive
    assert scores.reconstruction_precision_test == pytest.approx(1.0)
    assert scores.reconstruction_recall_test == pytest.approx(10 / 12)
    assert scores.reconstruction_f1_test == pytest.approx(2 * 10 / (10 + 12))
    assert scores.reconstruction_recall_by_class == pytest.approx(
        {"empty": 5 / 5, "mine": 3 / 4, "theirs": 2 / 3})


def _reference_reconstruction(codes: np.ndarray, labels: np.ndarray, max_f: np.ndarray,
                              t: float, train_codes: np.ndarray, train_labels: np.ndarray
                              ) -> float:
    """The paper's algorithm, one loop at a time: label sets on the training positions at t,
    then the OR of the firing latents' sets at each scored position, micro-F1 over cells."""
    n_latents, n_cells = codes.shape[1], labels.shape[1]
    label_sets = []
    for f in range(n_latents):
        on = [p for p in range(len(train_codes)) if train_codes[p, f] > t * max_f[f] > 0
              or (t == 0 and train_codes[p, f] > 0 and max_f[f] > 0)]
        label_sets.append({c for c in range(n_cells)
                           if (tp := sum(train_labels[p, c] for p in on)) >= 10
                           and tp / max(1, len(on)) >= 0.95})
    tp = predicted = 0
    for p in range(len(codes)):
        board: set[int] = set()
        for f in range(n_latents):
            if max_f[f] > 0 and codes[p, f] > t * max_f[f]:
                board |= label_sets[f]
        predicted += len(board)
        tp += sum(int(labels[p, c]) for c in board)
    return 2 * tp / max(1, predicted + int(labels.sum()))


def test_reconstruction_matches_a_loop_by_loop_reference() -> None:
    g = torch.Generator().manual_seed(3)
    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes = torch.rand(n, 6, generator=g) * (torch.rand(n, 6, generator=g) < 0.4)
        # cells 0-3 follow latents 0-3 (noisily; cell 3 also with latent 4), cell 4 holds
        # wherever cell 0 does (so latent 0 gets a set of two), cell 5 is noise
        noisy = codes[:, :4] > 0.5 * torch.rand(n, 4, generator=g)
        noisy[:, 3] |= codes[:, 4] > 0.2
        extra = noisy[:, :1] | (torch.rand(n, 1, generator=g) < 0.3)
        labels = torch.cat([noisy, extra, torch.rand(n, 1, generator=g) < 0.5], 1)
        return codes, labels
    (tr_codes, tr_labels), (te_codes, te_labels) = make(300), make(300)
    cfg = BoardEvalConfig()
    max_M = _sparse(tr_codes).max_per_latent()
    scores = board_eval.score_property("p", _firing(tr_codes, cfg, max_M),
                                       _firing(te_codes, cfg, max_M), tr_labels, te_labels, cfg)
    ref = {t: (_reference_reconstruction(tr_codes.numpy(), tr_labels.numpy(), max_M.numpy(), t,
                                         tr_codes.numpy(), tr_labels.numpy()),
               _reference_reconstruction(te_codes.numpy(), te_labels.numpy(), max_M.numpy(), t,
                                         tr_codes.numpy(), tr_labels.numpy()))
           for t in cfg.fractions()}
    best_t = max(ref, key=lambda t: ref[t][0])
    assert scores.reconstruction_f1_train == pytest.approx(ref[best_t][0])
    assert scores.reconstruction_threshold == best_t
    assert scores.reconstruction_f1_test == pytest.approx(ref[best_t][1])
    assert scores.reconstruction_f1_test_best == pytest.approx(max(r[1] for r in ref.values()))
    assert scores.n_feature_labels > scores.n_labelled_latents  # some latent has a set


def test_dense_firing_scores_like_sparse_and_a_linear_probe_reaches_its_ceiling() -> None:
    codes, labels = _planted(400, 0)
    cfg = BoardEvalConfig()
    max_M = _sparse(codes).max_per_latent()
    sparse = board_eval.score_property("p", _firing(codes, cfg, max_M), _firing(codes, cfg, max_M),
                                       labels, labels, cfg)
    dense = {t: board_eval.dense_firing(codes, max_M, t) for t in cfg.fractions()}
    assert board_eval.score_property("p", dense, dense, labels, labels, cfg) == sparse
    # the probe's cells as latents: a linearly separable property reconstructs perfectly
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g)
    cells = torch.stack([x[:, 0] > 0.3, x[:, 1] + x[:, 2] < 0], dim=1)
    train = board_eval.Split(x[:2000], {"p": cells[:2000]}, 1)
    test = board_eval.Split(x[2000:], {"p": cells[2000:]}, 1)
    probe = board_eval.fit_probe(train.acts_PD, cells[:2000], steps=300)
    ceiling = board_eval.probe_as_latents("p", probe, train, test, cfg)
    assert ceiling.reconstruction_f1_test > 0.95 and ceiling.n_cells_labelled == 2
