"""Residual-stream activations of a game LM over generated games, written as ``.npy`` so that
``saelab train --data FILE.npy`` trains SAEs on them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from saelab.boardgame import chess_games, lm, othello
from saelab.io import atomic_write_bytes

SAE_GAMES_SEED = 4_000_000  # SAE training games: disjoint from LM training and evaluation games
Positions = Literal["all", "scored"]


def game_tokens(game: str, n_games: int, seed: int, positions: Positions = "all",
                max_chars: int = 256, greedy_prob: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``(G, T)`` of ``n_games`` seeded games and the ``(P, 2)`` [game, position]
    index of the positions to keep: every move but the last (Othello), every character of the
    game or only the ``.`` characters when ``positions="scored"`` (chess)."""
    if game == "othello":
        games = othello.random_games(n_games, seed)
        tokens = games.tokens()[:, :othello.MAX_MOVES - 1]
        return tokens, np.argwhere(tokens != othello.PAD_TOKEN)
    c_games = chess_games.random_games(n_games, seed, max_chars, greedy_prob)
    if positions == "scored":
        return c_games.tokens, np.argwhere(c_games.dot_mask())
    inside = np.arange(max_chars)[None, :] < c_games.lengths[:, None]
    return c_games.tokens, np.argwhere(inside)


def game_activations(model: nn.Module, game: str, layer: int, n_games: int,
                     seed: int = SAE_GAMES_SEED, positions: Positions = "all") -> np.ndarray:
    """``(P, d_model)`` float32 activations after block ``layer`` at the kept positions."""
    max_chars = int(lm.model_config(model).n_positions)
    tokens, index = game_tokens(game, n_games, seed, positions, max_chars)
    acts = lm.residual_stream(model, torch.from_numpy(tokens), layer)
    picked = acts[torch.from_numpy(index[:, 0]), torch.from_numpy(index[:, 1])]
    return picked.numpy().astype(np.float32)


def cache_game_activations(model: nn.Module, game: str, layer: int, n_games: int,
                           folder: str | Path, seed: int = SAE_GAMES_SEED,
                           games_per_batch: int = 250) -> Path:
    """Write the activations after block ``layer`` over ``n_games`` games into a saelab
    activation cache (uniformly shuffled shards + manifest, with every row's (game, position)
    and the games' tokens kept beside it), ready for ``saelab train --data FOLDER``."""
    from saelab.cache import CacheWriter, WriterSettings

    max_chars = int(lm.model_config(model).n_positions)
    tokens, index = game_tokens(game, n_games, seed, "all", max_chars)
    d_model = int(lm.model_config(model).n_embd)
    settings = WriterSettings(width=d_model, max_rows=len(index), context_size=tokens.shape[1],
                              seed=seed, meta={"model": game, "hook": f"transformer.h.{layer}",
                                               "tokenizer": f"{game}-moves"})
    writer = CacheWriter(folder, settings)
    for batch_number, start in enumerate(range(0, n_games, games_per_batch)):
        if batch_number < writer.progress.batches_done:
            continue  # resumed: this batch is already in the cache
        stop = min(n_games, start + games_per_batch)
        batch_tokens = tokens[start:stop]
        keep = index[(index[:, 0] >= start) & (index[:, 0] < stop)] - np.array([start, 0])
        acts = lm.residual_stream(model, torch.from_numpy(batch_tokens), layer)
        rows = acts[torch.from_numpy(keep[:, 0]), torch.from_numpy(keep[:, 1])]
        writer.add_batch(batch_number, rows.numpy().astype(np.float32), keep, batch_tokens)
    writer.finish()
    return Path(folder)


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """Save ``array`` as ``.npy`` atomically (a crash never leaves a truncated file)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"activation file {path} must end in .npy (that is what `saelab train "
                         "--data` memory-maps)")
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())
    return path
