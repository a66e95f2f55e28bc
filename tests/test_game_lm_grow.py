"""Depth and width growth of a game LM (``--grow-from``): the grown model starts as the source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saelab.boardgame import lm, othello
from saelab.config import ConfigError
from saelab.training import game_lm

pytest.importorskip("transformers")


def tiny(**changes: object) -> lm.LMTrainConfig:
    settings: dict = dict(game="othello", n_layer=2, d_model=16, n_head=2, train_games=64,
                          chunk_games=32, batch_size=8, eval_games=10, warmup_steps=2)
    settings.update(changes)
    return lm.LMTrainConfig(**settings)


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=tokens).logits


def test_block_positions_spread_the_trained_blocks() -> None:
    assert lm.grown_block_positions(4, 8) == [0, 2, 4, 6]
    assert lm.grown_block_positions(4, 6) == [0, 1, 3, 4]
    assert lm.grown_block_positions(2, 3) == [0, 1]


def test_grown_model_computes_what_the_source_computes(tmp_path: Path) -> None:
    game_lm.train_lm(tiny(), tmp_path / "small", progress_seconds=1e9)
    source, _ = lm.load_game_lm(tmp_path / "small")
    grown = lm.build_model(tiny(n_layer=5, seed=3))
    record = lm.grow(grown, source)
    assert record["source_block_positions"] == [0, 2] and record["new_blocks"] == [1, 3, 4]
    tokens = torch.from_numpy(othello.random_games(6, seed=11).tokens()[:, :-1].astype("int64"))
    torch.testing.assert_close(logits(grown, tokens), logits(source, tokens), rtol=1e-5,
                               atol=1e-5)
    # the new blocks are not frozen: one optimiser step moves the grown model off the source
    grown.train()
    loss = grown(input_ids=tokens, labels=tokens).loss
    loss.backward()
    assert float(grown.transformer.h[1].mlp.c_proj.weight.grad.abs().sum()) > 0


def test_train_lm_grows_records_the_source_and_resumes(tmp_path: Path) -> None:
    game_lm.train_lm(tiny(), tmp_path / "small", progress_seconds=1e9)
    small, _ = lm.load_game_lm(tmp_path / "small")
    tokens = torch.from_numpy(othello.random_games(4, seed=5).tokens()[:, :-1].astype("int64"))
    # with a zero learning rate nothing moves: the trained result is the source's function
    frozen = tiny(n_layer=3, seed=1, grow_from=str(tmp_path / "small"), lr=0.0)
    game_lm.train_lm(frozen, tmp_path / "frozen", progress_seconds=1e9)
    torch.testing.assert_close(logits(lm.load_game_lm(tmp_path / "frozen")[0], tokens),
                               logits(small, tokens), rtol=1e-5, atol=1e-5)
    cfg = tiny(n_layer=3, seed=1, grow_from=str(tmp_path / "small"), lr=1e-3)
    with pytest.raises(game_lm.TrainingStopped):
        game_lm.train_lm(cfg, tmp_path / "deep", progress_seconds=1e9, stop_at_step=2)
    meta = game_lm.train_lm(game_lm.resume_config(tmp_path / "deep", {}), tmp_path / "deep",
                            resume=True, progress_seconds=1e9)
    grown = meta["grown_from"]
    assert grown["source_blocks"] == 2 and grown["blocks"] == 3
    assert len(grown["sha256"]) == 64 and grown["model"] == str(tmp_path / "small")
    assert json.loads((tmp_path / "deep" / lm.METADATA_NAME).read_text())["grown_from"] == grown
    assert f"--grow-from {tmp_path / 'small'}" in meta["command"]
    assert "--grow-from" not in lm.reproduce_command(tiny())


def test_growing_refuses_other_widths_and_shallower_targets(tmp_path: Path) -> None:
    game_lm.train_lm(tiny(), tmp_path / "small", progress_seconds=1e9)
    source, _ = lm.load_game_lm(tmp_path / "small")
    # heads of another width (32 in 2 heads of 16), or a width that is no multiple of 16
    for d_model, n_head in ((32, 2), (24, 3)):
        with pytest.raises(ConfigError, match="whole multiple of 16"):
            lm.grow(lm.build_model(tiny(n_layer=4, d_model=d_model, n_head=n_head)), source)
    with pytest.raises(ConfigError, match="choose --n-layer above 2"):
        lm.grow(lm.build_model(tiny(n_layer=2)), source)
    with pytest.raises(ConfigError, match="choose --n-layer above 2"):
        lm.grow(lm.build_model(tiny(n_layer=1, d_model=32, n_head=4)), source)


def test_wider_model_computes_what_the_source_computes_then_separates(tmp_path: Path) -> None:
    game_lm.train_lm(tiny(), tmp_path / "small", progress_seconds=1e9)
    source, _ = lm.load_game_lm(tmp_path / "small")
    tokens = torch.from_numpy(othello.random_games(6, seed=11).tokens()[:, :-1].astype("int64"))
    for n_layer, d_model, n_head in ((2, 32, 4), (3, 48, 6)):  # wider; wider and deeper
        grown = lm.build_model(tiny(n_layer=n_layer, d_model=d_model, n_head=n_head, seed=3))
        record = lm.grow(grown, source)
        assert record["source_width"] == 16 and record["width"] == d_model
        torch.testing.assert_close(logits(grown, tokens), logits(source, tokens), rtol=1e-5,
                                   atol=1e-5)
    # trained, the copies of the residual stream drift apart at first order: the copies are
    # read through different weights, so their gradients differ (identical readers leave them
    # nearly equal: 0.008 of the change here, against 0.078 with the split readers)
    cfg = tiny(n_layer=2, d_model=32, n_head=4, seed=1, grow_from=str(tmp_path / "small"),
               lr=3e-3)
    meta = game_lm.train_lm(cfg, tmp_path / "wide", progress_seconds=1e9)
    assert meta["grown_from"]["width"] == 32
    with torch.no_grad():
        wte = lm.load_game_lm(tmp_path / "wide")[0].transformer.wte.weight
        moved = (wte[:, :16] - source.transformer.wte.weight).norm()
        assert float((wte[:, :16] - wte[:, 16:]).norm() / moved) > 0.03
