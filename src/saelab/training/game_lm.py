"""Resumable training of the Othello and chess GPTs behind ``saelab boardgame train-lm``.

Games stream in seeded chunks (``saelab.boardgame.lm.batches``), so hundreds of thousands of
games never sit in memory and step s always sees the same games. Every ``checkpoint_minutes``,
and when the run is stopped (Ctrl-C or SIGTERM), ``OUT/checkpoint/`` is replaced in one atomic
rename by a folder holding:

- ``config.json`` + ``model.safetensors`` + ``training.json``: a loadable game LM (``saelab
  boardgame lm-eval OUT/checkpoint`` scores it mid-run);
- ``optimizer.safetensors`` (AdamW moments and step counts), ``rng.safetensors`` and
  ``state.json`` (step, games, elapsed seconds, recent losses, optimiser param groups, settings);
- ``checksums.json``: sha256 of every other file, verified before resuming.

Nothing is pickled. ``train_lm(cfg, OUT, resume=True)`` continues from the checkpoint and ends
with exactly the weights of an uninterrupted run (same device and thread count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from saelab.boardgame import lm, othello
from saelab.config import ConfigError, from_dict, to_dict
from saelab.integrity import (
    CheckpointError,
    read_bounded,
    save_tensors,
    verify_checksums,
    write_checksums,
)
from saelab.io import atomic_write_dir, atomic_write_json
from saelab.training.checkpoint import optimizer_from_flat, optimizer_to_flat
from saelab.training.device import resolve_device
from saelab.training.logging import MetricsLog, _fmt

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"
STATE_FORMAT_VERSION = 1
QUICK_EVAL_GAMES = 200  # held-out Othello games scored at each checkpoint (at most eval_games)


class TrainingStopped(Exception):
    """The run was stopped (signal or ``stop_at_step``) after writing a checkpoint."""

    def __init__(self, step: int, total: int, path: Path) -> None:
        super().__init__(f"stopped at step {step}/{total}; checkpoint {path}")
        self.step, self.total, self.path = step, total, path


@dataclass
class RunState:
    """What a checkpoint remembers besides weights and optimiser moments."""

    step: int = 0
    train_seconds: float = 0.0
    data_seconds: float = 0.0
    recent_losses: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per checkpoint
    # the schedule's history: from step s on the run aimed at train_games with the given
    # autocast and threads (each may change on resume; older segments lack the last two)
    segments: list[dict[str, Any]] = field(default_factory=list)
    # where the weights started when grown from a smaller model (``grow_from``); None: random
    grown_from: dict[str, Any] | None = None


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def resume_config(out_dir: str | Path, changes: dict[str, Any]) -> lm.LMTrainConfig:
    """The settings of the run checkpointed in ``out_dir`` with ``changes`` applied.

    Only settings that do not change what is trained may change (``lm.RUN_ONLY_SETTINGS``),
    plus ``train_games`` of a one-epoch run, to any count not below the games already trained
    on: the learning-rate schedule is then re-stretched from the resumed step on (lengthened or
    shortened), so the result is no longer that of a straight run.
    """
    state = _read_state(checkpoint_path(out_dir))
    settings = dict(state["settings"])
    refused = sorted(k for k, v in changes.items() if settings.get(k) != v
                     and k not in (*lm.RUN_ONLY_SETTINGS, "train_games"))
    if refused:
        raise ConfigError(f"--resume keeps the run's settings; {refused} differ from the "
                          f"checkpoint ({ {k: settings.get(k) for k in refused} }). Leave them "
                          "out, or start a new run with another --out")
    if "train_games" in changes and changes["train_games"] != settings["train_games"]:
        games_done = state["step"] * settings["batch_size"]
        if settings["epochs"] != 1 or changes["train_games"] < games_done:
            raise ConfigError(f"--train-games can only change for a one-epoch run, and not "
                              f"below the {games_done} games it has trained on")
    settings.update(changes)
    cfg = from_dict(lm.LMTrainConfig, settings, "checkpoint settings")
    cfg.validate()
    return cfg


def train_lm(cfg: lm.LMTrainConfig, out_dir: str | Path, command: str = "",
             resume: bool = False, progress_seconds: float = 30.0,
             stop_at_step: int | None = None) -> dict[str, Any]:
    """Train a game LM (resuming from ``out_dir/checkpoint`` when ``resume``), evaluate its
    legal-move accuracy on held-out games and save it to ``out_dir``.

    Returns the metadata written to ``training.json``. Raises :class:`TrainingStopped` after
    checkpointing when stopped by a signal or on reaching ``stop_at_step``.
    """
    cfg.validate()
    out = Path(out_dir)
    _refuse_to_overwrite(out, resume)
    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        model = lm.build_model(cfg).to(device)
        opt = make_optimizer(model, cfg)
        state = _load_checkpoint(checkpoint_path(out), model, opt) if resume else RunState()
        if not resume and cfg.grow_from:
            state.grown_from = _grow(model, cfg)
        now = {"train_games": cfg.train_games, "autocast": cfg.autocast, "threads": cfg.threads}
        if not state.segments or _segment_settings(state.segments[-1]) != _segment_settings(now):
            state.segments.append({"from_step": state.step, **now})
        if resume:
            print(f"resuming from {checkpoint_path(out)}: step {state.step}/"
                  f"{lm.total_steps(cfg)}, {_fmt(state.train_seconds)} trained so far",
                  file=sys.stderr, flush=True)
        log = MetricsLog(out, enabled=True)
        try:
            with _stop_on_signals() as stop:
                _fit(model, opt, cfg, state, out, device, log, stop, progress_seconds,
                     stop_at_step)
        finally:
            log.close()
        model.eval()
        start = time.time()
        accuracy = lm.legal_move_accuracy(model.cpu(), cfg.game, cfg.eval_games,
                                          lm.held_out_seed(cfg.seed),
                                          greedy_games=cfg.greedy_eval_games,
                                          max_chars=cfg.max_chars, greedy_prob=cfg.greedy_prob)
        eval_seconds = time.time() - start
    finally:
        torch.set_num_threads(old_threads)
    meta = _metadata(cfg, state, command)
    meta["legal_move_accuracy"] = accuracy
    meta["eval_seconds"] = round(eval_seconds, 1)
    lm.save_model(model, out, meta)
    return meta


def _refuse_to_overwrite(out: Path, resume: bool) -> None:
    ckpt = checkpoint_path(out)
    if resume and not (ckpt / STATE_NAME).exists():
        raise ConfigError(f"nothing to resume: {ckpt} holds no {STATE_NAME}; give the --out "
                          "folder of a run started by `saelab boardgame train-lm`")
    if not resume and ((ckpt / STATE_NAME).exists() or (out / "model.safetensors").exists()):
        raise ConfigError(f"{out} already holds a game LM or a training checkpoint; continue it "
                          f"with --resume {out}, or choose another --out (nothing is deleted)")


def _grow(model: nn.Module, cfg: lm.LMTrainConfig) -> dict[str, Any]:
    """Start ``model`` from the trained, shallower or narrower ``cfg.grow_from`` (``lm.grow``)."""
    source, game = lm.load_game_lm(cfg.grow_from)
    if game != cfg.game:
        raise ConfigError(f"grow_from: {cfg.grow_from} is a {game} model, this run trains "
                          f"{cfg.game}")
    record = lm.grow(model, source.to(next(model.parameters()).device))
    meta = lm.read_metadata(lm.model_folder(cfg.grow_from))
    record.update(model=cfg.grow_from, sha256=lm.weights_sha256(cfg.grow_from),
                  games_trained=meta.get("games_trained"))
    print(f"grown from {cfg.grow_from} ({record['source_blocks']} blocks of width "
          f"{record['source_width']}, {record['games_trained']} games) to width "
          f"{record['width']}: its blocks at {record['source_block_positions']}, new identity "
          f"blocks at {record['new_blocks']}", file=sys.stderr, flush=True)
    return record


def _fit(model: nn.Module, opt: torch.optim.Optimizer, cfg: lm.LMTrainConfig, state: RunState,
         out: Path, device: torch.device, log: MetricsLog, stop: list[int],
         progress_seconds: float, stop_at_step: int | None) -> None:
    total = lm.total_steps(cfg)
    positions = context_positions(cfg)
    model.train()
    session_start = last_ckpt = last_print = time.time()
    session_steps = 0
    data_seconds = 0.0
    stream = _timed(lm.batches(cfg, state.step))
    for batch, waited in stream:
        data_seconds += waited
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lm.lr_factor(batch.step, total, cfg.warmup_steps)
        state.recent_losses.append(train_step(model, opt, batch.data, batch.rows, cfg, device))
        state.step, session_steps = batch.step + 1, session_steps + 1
        now = time.time()
        if now - last_print >= progress_seconds or state.step == total:
            rate = session_steps / max(now - session_start, 1e-9)
            record = {"step": state.step, "total_steps": total,
                      "games": state.step * cfg.batch_size,
                      "loss": float(np.mean(state.recent_losses)),
                      "lr": opt.param_groups[0]["lr"],
                      "tokens_per_s": rate * cfg.batch_size * positions,
                      "eta_s": (total - state.step) / max(rate, 1e-9)}
            _progress_line(record)
            log.write(record)
            last_print = now
        stopping = bool(stop) or state.step == stop_at_step
        if stopping or now - last_ckpt >= 60 * cfg.checkpoint_minutes or state.step == total:
            state.train_seconds += now - session_start - data_seconds
            state.data_seconds += data_seconds
            path = write_checkpoint(out, model, opt, cfg, state, log)
            # the rate restarts after each checkpoint (its write and quick eval are not training)
            session_start = last_ckpt = time.time()
            session_steps, data_seconds = 0, 0.0
            if stopping and state.step < total:
                raise TrainingStopped(state.step, total, path)


def make_optimizer(model: nn.Module, cfg: lm.LMTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                             weight_decay=cfg.weight_decay)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, data: lm.TrainingData,
               rows: Tensor, cfg: lm.LMTrainConfig, device: torch.device) -> float:
    """One optimiser step on the games ``rows`` of ``data``; returns the loss."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
        logits = model(input_ids=data.inputs[rows].to(device)).logits
    loss = data.loss(logits.float(), rows)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def _timed(batches: Iterator[lm.Batch]) -> Iterator[tuple[lm.Batch, float]]:
    """Each batch with the seconds spent producing it (game generation, when a chunk starts)."""
    while True:
        start = time.time()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.time() - start


def context_positions(cfg: lm.LMTrainConfig) -> int:
    """Positions trained on per game (the inputs: all but the last token)."""
    return lm.context_length(cfg.game, cfg.max_chars) - 1


def _progress_line(r: dict[str, Any]) -> None:
    print(f"step {r['step']}/{r['total_steps']} ({100 * r['step'] / r['total_steps']:.1f}%) | "
          f"games {r['games']:,} | loss {r['loss']:.4f} | {r['tokens_per_s']:,.0f} tokens/s | "
          f"ETA {_fmt(r['eta_s'])}", file=sys.stderr, flush=True)


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a request (the list gets the signal number) to checkpoint and
    stop after the current step, instead of dying mid-write."""
    requested: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        requested.append(signum)
        print(f"signal {signum}: writing a checkpoint after this step, then stopping",
              file=sys.stderr, flush=True)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be caught here
        yield requested
        return
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------- checkpoints


def write_checkpoint(out: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     cfg: lm.LMTrainConfig, state: RunState, log: MetricsLog | None = None
                     ) -> Path:
    """Replace ``out/checkpoint`` atomically; log a quick held-out score (Othello, 200 games)."""
    quick = _quick_eval(model, cfg)
    entry = {"step": state.step, "games": state.step * cfg.batch_size,
             "train_seconds": round(state.train_seconds, 1),
             "loss": float(np.mean(state.recent_losses)) if state.recent_losses else math.nan,
             **quick}
    state.history.append(entry)
    flat, groups = optimizer_to_flat(opt)
    path = checkpoint_path(out)

    def fill(tmp: Path) -> None:
        lm.save_weights(model, tmp)
        save_tensors(flat, tmp / "optimizer.safetensors")
        save_tensors({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
        doc = {"format_version": STATE_FORMAT_VERSION, "step": state.step,
               "total_steps": lm.total_steps(cfg), "train_seconds": state.train_seconds,
               "data_seconds": state.data_seconds, "recent_losses": list(state.recent_losses),
               "history": state.history, "segments": state.segments,
               "grown_from": state.grown_from,
               "optimizer_param_groups": groups,
               "settings": to_dict(cfg)}
        (tmp / STATE_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True))
        atomic_write_json(tmp / lm.METADATA_NAME, {**_metadata(cfg, state, ""), **quick,
                                                   "complete": False})
        write_checksums(tmp)

    atomic_write_dir(path, fill)
    print(f"checkpoint: step {state.step} ({entry['games']:,} games, "
          f"{_fmt(state.train_seconds)} training) -> {path}"
          + "".join(f" | held-out {name} {value:.4f}" for name, value in quick.items()),
          file=sys.stderr, flush=True)
    if log is not None:
        log.write({"checkpoint": str(path), **entry})
    return path


def _quick_eval(model: nn.Module, cfg: lm.LMTrainConfig) -> dict[str, float]:
    if cfg.game != "othello":  # chess's greedy decoding is too slow to run at each checkpoint
        return {}
    was_training = model.training
    model.eval()
    games = othello.random_games(min(QUICK_EVAL_GAMES, cfg.eval_games), lm.held_out_seed(cfg.seed))
    scores = {name: hits.accuracy for name, hits in lm.othello_scores(model, games).items()}
    model.train(was_training)
    return scores


def _read_state(path: Path) -> dict[str, Any]:
    if not (path / STATE_NAME).exists():
        raise ConfigError(f"nothing to resume: {path} holds no {STATE_NAME}")
    doc = json.loads(read_bounded(path / STATE_NAME))
    if not isinstance(doc, dict) or doc.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path / STATE_NAME} is not a version-{STATE_FORMAT_VERSION} "
                              "game-LM training state")
    return doc


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> RunState:
    """Verify checksums, then restore weights, optimiser state and RNG in place."""
    doc = _read_state(path)
    verify_checksums(path, "checkpoint")
    weights = load_file(str(path / "model.safetensors"))
    bad = sorted(k for k, t in weights.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights {bad}")
    result = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"}  # tied to the token embedding, not stored
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing "
                              f"{sorted(set(result.missing_keys) - tied)}, unexpected "
                              f"{sorted(result.unexpected_keys)}")
    device = next(model.parameters()).device
    optim = {k: v.to(device) if not k.endswith(".step") else v
             for k, v in load_file(str(path / "optimizer.safetensors")).items()}
    optimizer_from_flat(opt, optim, doc["optimizer_param_groups"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    state = RunState(int(doc["step"]), float(doc["train_seconds"]), float(doc["data_seconds"]),
                     deque(doc["recent_losses"], maxlen=20), list(doc["history"]),
                     list(doc.get("segments", [{"from_step": 0,  # written before segments
                                                "train_games": doc["settings"]["train_games"]}])),
                     doc.get("grown_from"))
    return state


def _segment_settings(segment: dict[str, Any]
                      ) -> tuple[int, Literal["off", "bf16"], int | None]:
    """What a schedule segment ran with: ``--train-games``, ``--autocast`` and ``--threads``
    (segments written before autocast or threads were recorded: off, and None = unknown)."""
    return segment["train_games"], segment.get("autocast", "off"), segment.get("threads")


def reproduce_commands(cfg: lm.LMTrainConfig, segments: list[dict[str, Any]]) -> list[str]:
    """The commands that retrace a run whose ``--train-games``, ``--autocast`` or ``--threads``
    changed on resume: each part stops where the next one changed (``--stop-at-step``), so they
    give the same weights as the run itself (same torch build; a segment that did not record
    its thread count is given the run's current one)."""
    if len(segments) <= 1:
        return [lm.reproduce_command(cfg)]
    games, autocast, threads = _segment_settings(segments[0])
    first = dataclasses.replace(cfg, train_games=games, autocast=autocast,
                                threads=cfg.threads if threads is None else threads)
    commands = [lm.reproduce_command(first)]
    for seg in segments[1:]:
        commands[-1] += f" --stop-at-step {seg['from_step']}"
        games, autocast, threads = _segment_settings(seg)
        commands.append(f"saelab boardgame train-lm --resume OUT --train-games {games} "
                        f"--autocast {autocast}"
                        + ("" if threads is None else f" --threads {threads}"))
    return commands


def _metadata(cfg: lm.LMTrainConfig, state: RunState, command: str) -> dict[str, Any]:
    commands = reproduce_commands(cfg, state.segments)
    return {
        "game": cfg.game,
        "settings": to_dict(cfg),
        "command": command or " && ".join(commands),
        "schedule_segments": state.segments,
        "final_loss": float(np.mean(state.recent_losses)) if state.recent_losses else math.nan,
        "steps": state.step,
        "games_trained": state.step * cfg.batch_size,
        "data_seconds": round(state.data_seconds, 1),
        "train_seconds": round(state.train_seconds, 1),
        "checkpoints": state.history,
        "grown_from": state.grown_from,
        "versions": lm._versions(),
    }
