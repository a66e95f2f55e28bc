"""Game language models: training data, the legal-move loss, save/load, controls, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.boardgame import chess_games, lm, othello
from saelab.training.game_lm import train_lm

pytest.importorskip("transformers")


def test_legal_targets_loss_is_the_expected_next_token_loss() -> None:
    cfg = lm.LMTrainConfig(game="othello", train_games=4, batch_size=4)
    data = lm.training_data(cfg, 4, seed=0)
    logits = torch.randn(4, 59, othello.VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(4)
    log_probs = logits[..., 1:].log_softmax(-1)
    games = othello.random_games(4, seed=0)
    expected = []
    for g in range(4):
        for t in range(59):
            if games.moves[g, t + 1] < 0:
                continue
            legal = np.flatnonzero(othello.unpack_bits(games.next_legal[g, t]))
            tokens = othello.squares_to_tokens(legal) - 1
            expected.append(-float(log_probs[g, t, tokens].mean()))
    assert float(data.loss(logits, rows)) == pytest.approx(np.mean(expected), rel=1e-5)
    hard = lm.training_data(lm.LMTrainConfig(game="othello", legal_targets=False), 4, seed=0)
    assert hard.targets is not None and (hard.inputs == data.inputs).all()


def test_chess_training_data_masks_past_the_end() -> None:
    cfg = lm.LMTrainConfig(game="chess", max_chars=64, train_games=2, batch_size=2)
    data = lm.training_data(cfg, 2, seed=0)
    assert data.inputs.shape == (2, 63) and data.targets is not None
    text = chess_games.texts_only(1, seed=0, max_chars=64)[0]
    assert chess_games.decode(data.inputs[0, :len(text) - 1].tolist()) == text[:-1]


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cfg = lm.LMTrainConfig(game="othello", n_layer=1, d_model=16, n_head=2, train_games=64,
                           batch_size=16, eval_games=20, warmup_steps=2)
    out = tmp_path_factory.mktemp("oth")
    return out, train_lm(cfg, out, progress_seconds=1e9)


def test_train_lm_writes_a_reproducible_folder(tiny_trained: tuple[Path, dict]) -> None:
    out, meta = tiny_trained
    assert {"config.json", "model.safetensors", "training.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    saved = json.loads((out / "training.json").read_text())
    assert saved["game"] == "othello" and saved["settings"]["d_model"] == 16
    assert "--d-model 16" in saved["command"] and "--game othello" in saved["command"]
    assert 0 <= meta["legal_move_accuracy"]["top1_legal"] <= 1


def test_training_is_deterministic(tiny_trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, meta = tiny_trained
    cfg = lm.LMTrainConfig(**meta["settings"])
    again = train_lm(cfg, tmp_path, progress_seconds=1e9)
    assert again["final_loss"] == meta["final_loss"]
    first, second = lm.load_game_lm(out)[0], lm.load_game_lm(tmp_path)[0]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_load_and_random_init_control(tiny_trained: tuple[Path, dict]) -> None:
    out, _ = tiny_trained
    model, game = lm.load_game_lm(out)
    control_a, _ = lm.load_game_lm(out, random_init=True, seed=3)
    control_b, _ = lm.load_game_lm(out, random_init=True, seed=3)
    tokens = torch.from_numpy(othello.random_games(2, seed=1).tokens())
    with torch.no_grad():
        a, b = control_a(input_ids=tokens).logits, control_b(input_ids=tokens).logits
        trained = model(input_ids=tokens).logits
    assert game == "othello" and torch.equal(a, b) and not torch.allclose(a, trained)
    acts = lm.residual_stream(model, tokens, layer=0)
    assert acts.shape == (2, 60, 16)
    with pytest.raises(ValueError, match="out of range"):
        lm.residual_stream(model, tokens, layer=1)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-lm"):
        lm.load_game_lm(tmp_path)


def test_greedy_moves_stop_at_a_space() -> None:
    cfg = lm.LMTrainConfig(game="chess", n_layer=1, d_model=16, n_head=2, max_chars=64)
    model = lm.build_model(cfg).eval()
    prefixes = [torch.from_numpy(chess_games.encode(";1.")), torch.from_numpy(
        chess_games.encode(";1.e4 "))]
    moves = lm.greedy_moves(model, prefixes, max_new=5)
    assert len(moves) == 2 and all(len(m) <= 5 and " " not in m for m in moves)


@pytest.mark.parametrize("game", ["othello", "chess"])
def test_shipped_models_play_legal_moves(game: str) -> None:
    if not (lm.pretrained_path(game) / "model.safetensors").exists():
        pytest.skip(f"no shipped {game} model")
    model, loaded = lm.load_game_lm(game)
    meta = lm.read_metadata(lm.pretrained_path(game))
    assert loaded == game and meta["command"].startswith("saelab boardgame train-lm")
    seed = lm.held_out_seed(0)
    if game == "othello":
        accuracy = lm.othello_legal_accuracy(model, othello.random_games(100, seed))
        assert accuracy > 0.95  # 0.979 on 500 held-out games (training.json)
    else:
        games = chess_games.random_games(5, seed, max_chars=int(lm.model_config(model).n_positions))
        assert lm.chess_first_char_accuracy(model, games) > 0.8
