"""Resumable game-LM training: the streamed games, checkpoints, exact resume, refusals."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelab.boardgame import lm
from saelab.config import ConfigError
from saelab.integrity import CheckpointError
from saelab.training import game_lm

pytest.importorskip("transformers")


def tiny(**changes: object) -> lm.LMTrainConfig:
    settings: dict = dict(game="othello", n_layer=1, d_model=16, n_head=2, train_games=96,
                          chunk_games=40, batch_size=8, eval_games=10, warmup_steps=2)
    settings.update(changes)
    return lm.LMTrainConfig(**settings)


def test_batches_stream_chunks_and_restart_anywhere() -> None:
    cfg = tiny()
    assert lm.chunk_sizes(cfg) == [40, 40, 16]  # 40 is 5 whole batches of 8
    assert lm.total_steps(cfg) == 12
    every = list(lm.batches(cfg))
    assert [b.step for b in every] == list(range(12))
    assert max(b.data.inputs.shape[0] for b in every) == 40  # never more than a chunk in memory
    for start in (0, 4, 5, 11):  # within, at the start of, and in the last chunk
        again = next(lm.batches(cfg, start))
        assert again.step == start and torch.equal(again.rows, every[start].rows)
        assert torch.equal(again.data.inputs[again.rows], every[start].data.inputs[every[start].rows])
    seen = torch.cat([b.data.inputs[b.rows] for b in every[:5]])
    assert len({tuple(r.tolist()) for r in seen}) == 40  # one epoch visits each game once


def test_one_chunk_is_the_whole_game_set_of_earlier_versions() -> None:
    cfg = tiny(train_games=32, chunk_games=64, epochs=2)
    data = lm.training_data(cfg, 32, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    orders = [torch.randperm(32, generator=generator) for _ in range(2)]
    for b in lm.batches(cfg):
        epoch, i = divmod(b.step, 4)
        assert torch.equal(b.data.inputs[b.rows], data.inputs[orders[epoch][i * 8:(i + 1) * 8]])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_stop_and_resume_gives_the_weights_of_a_straight_run(tmp_path: Path) -> None:
    cfg = tiny()
    straight = game_lm.train_lm(cfg, tmp_path / "straight", progress_seconds=1e9)
    with pytest.raises(game_lm.TrainingStopped) as stopped:
        game_lm.train_lm(cfg, tmp_path / "split", progress_seconds=1e9, stop_at_step=7)
    ckpt = stopped.value.path
    assert stopped.value.step == 7 and ckpt == tmp_path / "split" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 7 and not any(ckpt.glob("*.pt")) and not any(ckpt.glob("*.bin"))
    umask = os.umask(0)
    os.umask(umask)
    assert {(f.stat().st_mode & 0o777) for f in ckpt.iterdir()} == {0o666 & ~umask}
    mid_model, game = lm.load_game_lm(ckpt)  # a checkpoint is a loadable game LM
    assert game == "othello" and not torch.equal(
        mid_model.state_dict()["transformer.h.0.mlp.c_fc.weight"],
        _weights(tmp_path / "straight")["transformer.h.0.mlp.c_fc.weight"])
    resumed = game_lm.train_lm(game_lm.resume_config(tmp_path / "split", {}),
                               tmp_path / "split", resume=True, progress_seconds=1e9)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["final_loss"] == straight["final_loss"]
    assert resumed["steps"] == straight["steps"] == 12
    assert resumed["legal_move_accuracy"] == straight["legal_move_accuracy"]
    assert [h["step"] for h in resumed["checkpoints"]] == [7, 12]


def test_refusals_keep_the_users_runs(tmp_path: Path) -> None:
    cfg = tiny(train_games=16)
    game_lm.train_lm(cfg, tmp_path, progress_seconds=1e9)
    with pytest.raises(ConfigError, match="--resume"):
        game_lm.train_lm(cfg, tmp_path, progress_seconds=1e9)
    with pytest.raises(ConfigError, match="d_model"):
        game_lm.resume_config(tmp_path, {"d_model": 32})
    with pytest.raises(ConfigError, match="not below the 16 games"):
        game_lm.resume_config(tmp_path, {"train_games": 8})
    grown = game_lm.resume_config(tmp_path, {"train_games": 32, "device": "cpu"})
    assert grown.train_games == 32 and grown.d_model == 16
    with pytest.raises(ConfigError, match="nothing to resume"):
        game_lm.train_lm(cfg, tmp_path / "empty", resume=True)
    weights = tmp_path / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        game_lm.train_lm(grown, tmp_path, resume=True)


def test_sigterm_checkpoints_then_stops(tmp_path: Path) -> None:
    cfg = tiny(train_games=400_000, chunk_games=64)  # far more steps than can run here
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(game_lm.TrainingStopped) as stopped:
            game_lm.train_lm(cfg, tmp_path, progress_seconds=1e9)
    finally:
        timer.cancel()
    step = stopped.value.step
    assert 0 < step < lm.total_steps(cfg)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == step
    assert signal.getsignal(signal.SIGTERM) == before  # our handler is removed again
    record = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record[-1]["checkpoint"].endswith("checkpoint") and record[-1]["step"] == step


def test_board_probe_square_accuracies_read_the_class_major_cells() -> None:
    from saelab.boardgame import othello
    from saelab.boardgame.properties import othello_board, othello_positions
    from saelab.pipelines.board_probe import square_accuracies

    games = othello.random_games(3, seed=0)
    board = torch.from_numpy(othello_board(games, othello_positions(games, 59)))
    assert square_accuracies(board.float() * 10 - 5, board) == (1.0, 1.0)
    swapped = torch.cat([board[:, :64], board[:, 128:], board[:, 64:128]], dim=1)
    square, mine_theirs = square_accuracies(swapped.float(), board)
    assert mine_theirs == 0.0
    assert square == pytest.approx(float(board[:, :64].float().mean()))  # only empties right


def test_train_resume_and_lm_eval_from_the_command_line(tmp_path: Path, capsys) -> None:
    from saelab.cli import main

    out = tmp_path / "lm"
    common = ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--batch-size", "8",
              "--eval-games", "5", "--warmup-steps", "1"]
    assert main(["boardgame", "train-lm", "--out", str(out), "--train-games", "16",
                 *common]) == 0
    assert main(["boardgame", "train-lm", "--resume", str(out), "--train-games", "40",
                 "--stop-at-step", "3"]) == 130
    assert main(["boardgame", "train-lm", "--resume", str(out), "--train-games", "32"]) == 0
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps"] == 4 and [s["from_step"] for s in meta["schedule_segments"]] == [0, 2, 3]
    # The recorded commands retrace the run with its schedule changes, to the same weights.
    again = tmp_path / "again"
    for command in meta["command"].replace("OUT", str(again)).split(" && "):
        assert command.startswith("saelab boardgame train-lm")
        assert main(command.split()[1:]) in (0, 130)
    a, b = _weights(out), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["boardgame", "train-lm", "--resume", str(out), "--d-model", "32"]) == 2
    assert "['d_model'] differ from the checkpoint" in capsys.readouterr().err
    assert main(["boardgame", "lm-eval", str(out), "--games", "4", "--probe-games", "4",
                 "--probe-steps", "5"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["top1_legal"] <= 1
    assert scores["board_probe"]["layer"] == 0 and 0 < scores["board_probe"]["square_accuracy"] <= 1


def test_autocast_may_change_on_resume_and_the_commands_retrace_it(tmp_path: Path) -> None:
    from saelab.cli import main

    common = ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--batch-size", "8",
              "--eval-games", "4", "--warmup-steps", "1", "--train-games", "32"]
    straight, mixed = tmp_path / "fp32", tmp_path / "mixed"
    assert main(["boardgame", "train-lm", "--out", str(straight), *common]) == 0
    assert main(["boardgame", "train-lm", "--out", str(mixed), *common,
                 "--stop-at-step", "2"]) == 130
    assert main(["boardgame", "train-lm", "--resume", str(mixed), "--autocast", "bf16"]) == 0
    meta = json.loads((mixed / "training.json").read_text())
    assert [(s["from_step"], s["autocast"]) for s in meta["schedule_segments"]] == [
        (0, "off"), (2, "bf16")]
    a, b = _weights(straight), _weights(mixed)
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the bf16 steps rounded differently
    assert all(torch.isfinite(v).all() for v in b.values())
    again = tmp_path / "again"
    for command in meta["command"].replace("OUT", str(again)).split(" && "):
        assert main(command.split()[1:]) in (0, 130)
    c = _weights(again)
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_segments_of_checkpoints_older_than_autocast_read_as_off() -> None:
    segments = [{"from_step": 0, "train_games": 96}, {"from_step": 5, "train_games": 200}]
    commands = game_lm.reproduce_commands(tiny(autocast="bf16"), segments)
    assert "--autocast off" in commands[0] and "--stop-at-step 5" in commands[0]
    assert commands[1].endswith("--train-games 200 --autocast off")


def test_a_thread_count_changed_on_resume_is_retraced(tmp_path: Path) -> None:
    from saelab.cli import main

    out = tmp_path / "run"
    assert main(["boardgame", "train-lm", "--out", str(out), "--n-layer", "1", "--d-model", "16",
                 "--n-head", "2", "--batch-size", "8", "--eval-games", "4", "--warmup-steps", "1",
                 "--train-games", "32", "--stop-at-step", "2"]) == 130
    assert main(["boardgame", "train-lm", "--resume", str(out), "--threads", "2"]) == 0
    meta = json.loads((out / "training.json").read_text())
    assert [(s["from_step"], s["threads"]) for s in meta["schedule_segments"]] == [(0, 1), (2, 2)]
    first, second = meta["command"].split(" && ")
    assert "--threads 1 " in first and second.endswith("--threads 2")
    again = tmp_path / "again"
    for command in (first, second):
        assert main(command.replace("OUT", str(again)).split()[1:]) in (0, 130)
    a, b = _weights(out), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
