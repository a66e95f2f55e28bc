"""GPT-2 language models of Othello and chess games: training, loading, legal-move accuracy,
residual-stream activations.

Models are Hugging Face ``GPT2LMHeadModel`` built from a ``GPT2Config`` (no download). A trained
model folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``) and
``training.json``: the game, the exact settings, the command that reproduces it and what was
measured. The random-initialised control of a model is the same config with weights drawn from
``torch.manual_seed(seed)`` (built on the fly, never shipped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from saelab.boardgame import chess_games, othello
from saelab.config import ConfigError, option
from saelab.integrity import current_umask, sha256_file
from saelab.io import atomic_write_bytes, atomic_write_json

Game = Literal["othello", "chess"]
GAMES: tuple[Game, ...] = ("othello", "chess")
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
METADATA_NAME = "training.json"
IGNORE_INDEX = -100


@dataclass
class LMTrainConfig:
    """Settings of one game-LM training run (all recorded next to the weights)."""

    game: str = option("othello", "which game: othello or chess")
    n_layer: int = option(4, "transformer blocks")
    d_model: int = option(128, "residual stream width")
    n_head: int = option(4, "attention heads")
    train_games: int = option(48_000, "games generated for training (seeded)")
    epochs: int = option(1, "passes over the training games")
    batch_size: int = option(16, "games per optimiser step")
    lr: float = option(3e-3, "peak AdamW learning rate (linear warm-up, cosine decay to 10%)")
    warmup_steps: int = option(100, "learning-rate warm-up steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    seed: int = option(0, "seed for weights, games and data order")
    eval_games: int = option(500, "held-out games for the legal-move accuracy")
    greedy_eval_games: int = option(30, "chess: held-out games whose moves are greedy-decoded")
    max_chars: int = option(256, "chess: movetext length in characters")
    greedy_prob: float = option(0.8, "chess: share of moves that take the most valuable capture")
    legal_targets: bool = option(True, "othello: train towards the uniform distribution over "
                                 "legal next moves (the expected next-token loss; less noise)")
    threads: int = option(1, "torch threads while training (the machine may be shared)")
    chunk_games: int = option(16_384, "games generated at a time (memory stays bounded; each "
                              "chunk has its own seed, so a resumed run regenerates the same games)")
    device: str = option("cpu", "where to train: cpu, cuda, cuda:N or mps")
    autocast: Literal["off", "bf16"] = option(
        "off", "bf16: run the model's matrix products in bfloat16 (weights, gradients, AdamW "
        "state and the loss stay float32); pays on GPUs and CPUs with native bf16 (1.6-1.7x "
        "per step for 8x256 on an avx512_bf16 CPU: benchmarks/game_lm_autocast.py)")
    checkpoint_minutes: float = option(10.0, "minutes between resumable checkpoints in "
                                       "OUT/checkpoint/ (also written when stopped)")
    grow_from: str = option("", "start from this trained game LM (a folder, or a game name for "
                            "the shipped model) with fewer blocks or a narrower stream instead of "
                            "random weights: the grown model starts computing exactly what it "
                            "computes (see saelab.boardgame.lm.grow)")

    def validate(self) -> None:
        if self.game not in GAMES:
            raise ConfigError(f"unknown game {self.game!r}; choose one of {list(GAMES)}")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.train_games < self.batch_size:
            raise ConfigError("train_games must be at least batch_size")
        if self.chunk_games < self.batch_size:
            raise ConfigError(f"chunk_games={self.chunk_games} must be at least "
                              f"batch_size={self.batch_size}")
        if self.checkpoint_minutes <= 0:
            raise ConfigError("checkpoint_minutes must be positive")
        if self.grow_from and self.epochs != 1:
            raise ConfigError("grow_from needs a one-epoch run (epochs=1)")


#: Settings that only say where and how fast a run goes; a resumed run may change them. Device
#: autocast and threads change the rounding, so such a run is no longer bit-identical to a
#: straight one (the run's schedule segments record each autocast and thread-count change).
RUN_ONLY_SETTINGS = ("device", "threads", "checkpoint_minutes", "eval_games", "greedy_eval_games",
                     "autocast")


def context_length(game: str, max_chars: int = 256) -> int:
    """Positions the model sees: 60 Othello moves or ``max_chars`` characters."""
    return othello.MAX_MOVES if game == "othello" else max_chars


def vocab_size(game: str) -> int:
    return othello.VOCAB_SIZE if game == "othello" else chess_games.VOCAB_SIZE


def build_model(cfg: LMTrainConfig) -> nn.Module:
    """A freshly initialised GPT-2 for ``cfg`` (weights seeded by ``cfg.seed``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size(cfg.game),
                        n_positions=context_length(cfg.game, cfg.max_chars),
                        n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        return GPT2LMHeadModel(config)


def grown_block_positions(n_from: int, n_to: int) -> list[int]:
    """Where the ``n_from`` trained blocks go in a stack of ``n_to``: spread evenly, first block
    first (4 into 8: 0, 2, 4, 6), so every trained block is followed by new ones."""
    return [i * n_to // n_from for i in range(n_from)]


@torch.no_grad()
def grow(model: nn.Module, source: nn.Module) -> dict[str, Any]:
    """Make the deeper and/or wider ``model`` compute exactly what the trained ``source`` computes.

    Function-preserving growth (Net2Net's deeper and wider networks, for a pre-LN GPT-2 stack).

    *Depth*: the source's blocks go to :func:`grown_block_positions`; every other block keeps its
    fresh initialisation except for the output projections of its attention and MLP, which are
    set to zero, so it adds nothing to the residual stream until training moves them.

    *Width* (``n_embd`` a whole multiple ``r`` of the source's, the same head width): the
    residual stream becomes ``r`` copies of the source's, ``[x, x, ...]``. A layer norm of the
    copies sees the same mean and variance, so it normalises as before; its gain and bias are
    divided by ``r``, which makes every reader of it (the attention's and MLP's input weights, and
    the tied unembedding), copied along the input for each copy, sum back to the source's value.
    The source's heads and MLP units write the same update into every copy; the weights with
    which they read the copies are the source's plus zero-sum noise (see :func:`_split_reader`),
    so the copies get different gradients and training separates them. The added heads and units
    keep their fresh input weights and start with zero output weights.

    Gradients reach every zeroed projection from step 1 (its input is not zero). Returns a record
    of what was done (for ``training.json``). Raises ``ConfigError`` when the models cannot be
    related this way.
    """
    src, dst = model_config(source), model_config(model)
    for key in ("vocab_size", "n_positions", "activation_function", "tie_word_embeddings"):
        if getattr(src, key) != getattr(dst, key):
            raise ConfigError(f"grow_from: the source model has {key}={getattr(src, key)}, this "
                              f"run {getattr(dst, key)}; growing adds blocks and width only, so "
                              "every other setting must match the source's")
    head = src.n_embd // src.n_head
    if dst.n_embd % src.n_embd or dst.n_embd // dst.n_head != head:
        raise ConfigError(f"grow_from: the source has n_embd={src.n_embd} in {src.n_head} heads "
                          f"of {head}; a wider run needs a whole multiple of {src.n_embd} and "
                          f"heads of the same width (for --d-model {2 * src.n_embd}, --n-head "
                          f"{2 * src.n_head}), not n_embd={dst.n_embd} with n_head={dst.n_head}")
    if dst.n_layer < src.n_layer or (dst.n_layer == src.n_layer and dst.n_embd == src.n_embd):
        raise ConfigError(f"grow_from: the source already has {src.n_layer} blocks of width "
                          f"{src.n_embd}; choose --n-layer above {src.n_layer} or a --d-model "
                          f"that is a multiple of {src.n_embd} (or both)")
    r = dst.n_embd // src.n_embd
    # GPT2LMHeadModel.transformer: typed loosely by transformers
    s_body: Any = source.transformer
    d_body: Any = model.transformer
    for name in ("wte", "wpe"):  # the tied unembedding follows wte
        getattr(d_body, name).weight.copy_(getattr(s_body, name).weight.repeat(1, r))
    _copy_layer_norm(d_body.ln_f, s_body.ln_f, r)
    positions = grown_block_positions(src.n_layer, dst.n_layer)
    for i, p in enumerate(positions):
        _widen_block(d_body.h[p], s_body.h[i], r, src.n_embd)
    new = [p for p in range(dst.n_layer) if p not in positions]
    for p in new:
        for proj in (d_body.h[p].attn.c_proj, d_body.h[p].mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    return {"source_blocks": src.n_layer, "blocks": dst.n_layer,
            "source_block_positions": positions, "new_blocks": new,
            "source_width": src.n_embd, "width": dst.n_embd}


def _split_reader(fresh_ID: Tensor, source_WD: Tensor, r: int) -> Tensor:
    """The source's input weights for ``r`` copies of its inputs, ``(r·W, D)``: copy c reads
    with ``source + (fresh_c − mean of the fresh_c)``, so the copies' weights still sum to
    ``r × source`` (the function is kept) but differ by the fresh initialisation's noise.
    Identical readers would give every copy the same gradient, and the copies of the residual
    stream would stay equal (a symmetric saddle that training leaves only slowly); Net2Net
    breaks the same symmetry with noise."""
    fresh_rWD = fresh_ID.reshape(r, *source_WD.shape)
    return (source_WD + fresh_rWD - fresh_rWD.mean(dim=0, keepdim=True)).reshape(fresh_ID.shape)


def _copy_layer_norm(dst: nn.LayerNorm, src: nn.LayerNorm, r: int) -> None:
    dst.weight.copy_(src.weight.repeat(r) / r)
    dst.bias.copy_(src.bias.repeat(r) / r)


def _widen_block(dst: Any, src: Any, r: int, width: int) -> None:
    """Write the source block into the (``r`` times wider) block ``dst``, whose other weights are
    its fresh initialisation. GPT-2's ``Conv1D`` weights are (inputs, outputs)."""
    _copy_layer_norm(dst.ln_1, src.ln_1, r)
    _copy_layer_norm(dst.ln_2, src.ln_2, r)
    wide = width * r
    for part in range(3):  # the query, key and value columns; the source's heads come first
        cols, src_cols = slice(part * wide, part * wide + width), slice(part * width,
                                                                        (part + 1) * width)
        dst.attn.c_attn.weight[:, cols] = _split_reader(dst.attn.c_attn.weight[:, cols],
                                                        src.attn.c_attn.weight[:, src_cols], r)
        dst.attn.c_attn.bias[cols] = src.attn.c_attn.bias[src_cols]
    inner = src.mlp.c_fc.weight.shape[1]
    dst.mlp.c_fc.weight[:, :inner] = _split_reader(dst.mlp.c_fc.weight[:, :inner],
                                                   src.mlp.c_fc.weight, r)
    dst.mlp.c_fc.bias[:inner] = src.mlp.c_fc.bias
    for d_proj, s_proj, used in ((dst.attn.c_proj, src.attn.c_proj, width),
                                 (dst.mlp.c_proj, src.mlp.c_proj, inner)):
        d_proj.weight.zero_()  # the added heads and units write nothing yet
        d_proj.weight[:used] = s_proj.weight.repeat(1, r)
        d_proj.bias.copy_(s_proj.bias.repeat(r))


# ---------------------------------------------------------------------------- training data


@dataclass
class TrainingData:
    """Input sequences ``(G, T-1)`` and what each next position is trained towards.

    ``targets`` holds next-token ids (``IGNORE_INDEX`` past a game's end). For Othello with
    ``legal_targets`` it is replaced by ``next_legal``: the bitboard of legal next moves, and the
    loss is the cross-entropy to the *uniform distribution over legal moves*. Random games draw
    the next move uniformly from exactly that set, so this is the expected value of the usual
    next-token loss (same minimiser, same model of the game distribution) with far less
    gradient noise.
    """

    inputs: Tensor
    targets: Tensor | None = None
    next_legal: np.ndarray | None = None  # (G, T-1) uint64

    def loss(self, logits_BTV: Tensor, rows: Tensor) -> Tensor:
        if self.next_legal is None:
            assert self.targets is not None
            return nn.functional.cross_entropy(logits_BTV.flatten(0, 1),
                                               self.targets[rows].flatten().to(logits_BTV.device),
                                               ignore_index=IGNORE_INDEX)
        legal = torch.from_numpy(othello.unpack_bits(self.next_legal[rows.numpy()]))
        legal_tokens = legal[..., list(othello.PLAYABLE_SQUARES)].to(logits_BTV.device).float()
        counts = legal_tokens.sum(-1, keepdim=True)
        log_probs = logits_BTV[..., 1:].float().log_softmax(-1)  # the pad is never legal
        per_position = -(legal_tokens * log_probs).sum(-1) / counts.clamp_min(1).squeeze(-1)
        scored = counts.squeeze(-1) > 0  # the game goes on after this position
        return per_position[scored].mean()


def training_data(cfg: LMTrainConfig, n_games: int, seed: int) -> TrainingData:
    """Seeded training games for ``cfg``: inputs are all positions but the last."""
    if cfg.game == "othello":
        games = othello.random_games(n_games, seed=seed)
        tokens = torch.from_numpy(games.tokens())
        if cfg.legal_targets:
            has_next = games.moves[:, 1:] >= 0
            next_legal = np.where(has_next, games.next_legal[:, :-1], np.uint64(0))
            return TrainingData(tokens[:, :-1], next_legal=next_legal)
        targets = tokens[:, 1:].clone()
        targets[targets == othello.PAD_TOKEN] = IGNORE_INDEX
        return TrainingData(tokens[:, :-1], targets)
    texts = chess_games.texts_only(n_games, seed=seed, max_chars=cfg.max_chars,
                                   greedy_prob=cfg.greedy_prob)
    ids = torch.full((n_games, cfg.max_chars), chess_games.PAD_ID, dtype=torch.int64)
    for g, text in enumerate(texts):
        ids[g, :len(text)] = torch.from_numpy(chess_games.encode(text))
    lengths = torch.tensor([len(t) for t in texts])
    targets = ids[:, 1:].clone()
    past_end = torch.arange(1, cfg.max_chars)[None, :] >= lengths[:, None]
    targets[past_end] = IGNORE_INDEX
    return TrainingData(ids[:, :-1], targets)


# ---------------------------------------------------------------------------- the game stream


def chunk_sizes(cfg: LMTrainConfig) -> list[int]:
    """Games per chunk: ``chunk_games`` rounded down to whole batches, the last one shorter."""
    size = cfg.chunk_games - cfg.chunk_games % cfg.batch_size
    full, rest = divmod(cfg.train_games, size)
    return [size] * full + ([rest] if rest else [])


def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of chunk ``chunk``'s games and order. Chunk 0 uses ``seed`` itself, so a run whose
    games fit in one chunk trains on exactly the games (and order) of earlier saelab versions."""
    if chunk == 0:
        return seed
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint32)[0])


def steps_per_epoch(cfg: LMTrainConfig) -> int:
    return sum(n // cfg.batch_size for n in chunk_sizes(cfg))


def total_steps(cfg: LMTrainConfig) -> int:
    return steps_per_epoch(cfg) * cfg.epochs


def chunk_order(cfg: LMTrainConfig, chunk: int, n_games: int, epoch: int) -> Tensor:
    """The order chunk ``chunk``'s games are visited in during ``epoch``: the (epoch+1)-th
    permutation from the chunk's seeded generator (recomputed, never stored)."""
    generator = torch.Generator().manual_seed(chunk_seed(cfg.seed, chunk))
    for _ in range(epoch):
        torch.randperm(n_games, generator=generator)
    return torch.randperm(n_games, generator=generator)


@dataclass
class Batch:
    step: int
    data: TrainingData
    rows: Tensor  # rows of ``data`` in this batch


def batches(cfg: LMTrainConfig, start_step: int = 0) -> Iterator[Batch]:
    """The batches of a run from ``start_step`` on, generating one chunk of games at a time.

    Step s always gets the same games, however the run was interrupted and resumed: the chunk,
    epoch and offset follow from s alone.
    """
    sizes = chunk_sizes(cfg)
    per_chunk = [n // cfg.batch_size for n in sizes]
    starts = np.cumsum([0, *per_chunk])
    per_epoch, total = int(starts[-1]), total_steps(cfg)
    step = start_step
    while step < total:
        epoch, within = divmod(step, per_epoch)
        chunk = int(np.searchsorted(starts, within, side="right")) - 1
        data = training_data(cfg, sizes[chunk], chunk_seed(cfg.seed, chunk))
        order = chunk_order(cfg, chunk, sizes[chunk], epoch)
        for b in range(within - int(starts[chunk]), per_chunk[chunk]):
            if step >= total:
                return
            yield Batch(step, data, order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            step += 1


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def held_out_seed(seed: int) -> int:
    """Seed of the evaluation games: far from any training seed."""
    return 1_000_003 + seed


def reproduce_command(cfg: LMTrainConfig) -> str:
    """The ``saelab boardgame train-lm`` command line that reproduces ``cfg``: every setting is
    spelled out, so later changes of the defaults cannot change what it trains."""
    flags = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if f.name in ("game", "device", "checkpoint_minutes"):  # no effect on the weights
            continue
        if f.name == "grow_from" and not value:  # random initial weights
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags.append(f"{flag} {value}")
    return " ".join(["saelab boardgame train-lm --game", cfg.game, "--out OUT", *flags])


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


# ---------------------------------------------------------------------------- saving and loading


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' per-file progress bars (noise for tiny local models)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save_weights(model: nn.Module, out: Path) -> None:
    """``save_pretrained`` (config.json, model.safetensors), with the files given the usual
    permissions (transformers writes its weights as 0600)."""
    with _no_progress_bars():
        model.save_pretrained(out)  # type: ignore[operator]
    mode = 0o666 & ~current_umask()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (out / name).exists():
            os.chmod(out / name, mode)


def save_model(model: nn.Module, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """``save_pretrained`` plus ``training.json`` and a short README."""
    out = Path(out_dir)
    save_weights(model, out)
    atomic_write_json(out / METADATA_NAME, meta)
    atomic_write_bytes(out / "README.md", _readme(meta).encode())
    return out


def _readme(meta: dict[str, Any]) -> str:
    acc = meta.get("legal_move_accuracy", {})
    lines = [f"# {meta['game']} GPT-2 (saelab)", "",
             "Reproduce (seeded; a single torch thread gives the same weights on the same "
             "torch build):", "", "```bash", meta["command"], "```", "",
             f"Training: {meta.get('train_seconds')} s after {meta.get('data_seconds')} s of "
             f"game generation; final loss {meta.get('final_loss', float('nan')):.4f}.", "",
             "Legal-move accuracy on held-out games:", ""]
    lines += [f"- {k}: {v:.4f}" for k, v in acc.items()]
    lines += ["", "Full settings: `training.json`. Definitions: docs/boardgame.md.", ""]
    return "\n".join(lines)


def pretrained_path(game: str) -> Path:
    """Folder of the shipped model for ``game``."""
    if game not in GAMES:
        raise ConfigError(f"unknown game {game!r}; choose one of {list(GAMES)}")
    return PRETRAINED_DIR / game


def model_folder(game_or_path: str | Path) -> Path:
    """The folder of a game LM: a game name means the shipped model, anything else a path."""
    name = str(game_or_path)
    return pretrained_path(name) if name in GAMES else Path(name)


def weights_sha256(game_or_path: str | Path) -> str:
    """sha256 of a game LM's ``model.safetensors`` (to record which weights a result used)."""
    return sha256_file(model_folder(game_or_path) / "model.safetensors")


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / METADATA_NAME
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} has no {METADATA_NAME}; is it a game LM saved by "
                                "`saelab boardgame train-lm`?")
    data: dict[str, Any] = json.loads(meta_path.read_text())
    return data


def load_game_lm(game_or_path: str | Path, random_init: bool = False, seed: int = 0
                 ) -> tuple[nn.Module, str]:
    """Load a game LM (a game name means the shipped model) in eval mode; returns (model, game).

    ``random_init=True`` gives the control: the same config with ``seed``-ed random weights.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    path = model_folder(game_or_path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path}: give a game name ({', '.join(GAMES)}) or a "
                                "folder written by `saelab boardgame train-lm`")
    game = str(read_metadata(path)["game"])
    model: nn.Module
    if random_init:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(GPT2Config.from_pretrained(path))
    else:
        with _no_progress_bars():
            model = GPT2LMHeadModel.from_pretrained(path)
    model.eval()
    return model, game


# ---------------------------------------------------------------------------- activations


@torch.no_grad()
def residual_stream(model: nn.Module, tokens_GT: Tensor, layer: int,
                    batch_size: int = 256) -> Tensor:
    """``(G, T, d_model)`` residual stream after block ``layer`` (0-based), via a forward hook
    on ``transformer.h.{layer}`` (later blocks are skipped)."""
    from saelab.models.hooks import capture

    n_layer = int(model_config(model).n_layer)
    if not 0 <= layer < n_layer:
        raise ConfigError(f"layer {layer} is out of range: the model has blocks 0..{n_layer - 1}")
    hook = f"transformer.h.{layer}"
    chunks = []
    for start in range(0, tokens_GT.shape[0], batch_size):
        batch = tokens_GT[start:start + batch_size]
        got = capture(model, [hook], functools.partial(model, input_ids=batch))
        chunks.append(next(iter(got.values())))
    return torch.cat(chunks)


# ---------------------------------------------------------------------------- legal-move accuracy


@torch.no_grad()
def _logits(model: nn.Module, tokens_GT: Tensor, batch_size: int = 256) -> Tensor:
    """Logits on the CPU, whatever device the model is on."""
    device = next(model.parameters()).device
    return torch.cat([model(input_ids=tokens_GT[s:s + batch_size].to(device)).logits.cpu()
                      for s in range(0, tokens_GT.shape[0], batch_size)])


@dataclass
class GameHits:
    """Per-game sums behind a legal-move score: in game g, ``scored[g]`` positions were scored
    and their scores (1 for a legal top-1 prediction, else 0; or the probability put on legal
    moves) sum to ``hits[g]``. Kept per game so that comparisons can resample whole games
    (positions of one game are not independent)."""

    hits: np.ndarray  # (G,) int, or float for a probability
    scored: np.ndarray  # (G,) int

    @property
    def accuracy(self) -> float:
        return float(self.hits.sum() / max(int(self.scored.sum()), 1))


def othello_scores(model: nn.Module, games: othello.OthelloGames) -> dict[str, GameHits]:
    """Per game, over the positions scored (every move but the last), from one forward pass:

    - ``top1_legal``: positions where the top-1 predicted square is legal for the player who
      moves next;
    - ``legal_mass``: the probability the model puts on legal squares, summed over positions
      (1 per position for a perfect model of random play; far more sensitive than top-1).

    The pad token is never a prediction: its logit is dropped before the arg-max and softmax.
    """
    tokens = torch.from_numpy(games.tokens())[:, :-1]
    logits = _logits(model, tokens)[..., 1:].float()  # drop the pad logit
    top_square = othello.tokens_to_squares(logits.argmax(-1).numpy() + 1)
    legal = othello.unpack_bits(games.next_legal[:, :-1])
    hit = np.take_along_axis(legal, top_square[..., None], axis=-1)[..., 0]
    legal_tokens = legal[..., list(othello.PLAYABLE_SQUARES)]  # token t + 1 is square PLAYABLE[t]
    mass = (logits.softmax(-1).numpy() * legal_tokens).sum(-1)
    scored = games.moves[:, 1:] >= 0  # a next move exists
    n = scored.sum(axis=1)
    return {"top1_legal": GameHits((hit & scored).sum(axis=1), n),
            "legal_mass": GameHits(np.where(scored, mass, 0.0).sum(axis=1), n)}


def othello_legal_hits(model: nn.Module, games: othello.OthelloGames) -> GameHits:
    """Per game: positions where the top-1 predicted square is legal (:func:`othello_scores`)."""
    return othello_scores(model, games)["top1_legal"]


def othello_legal_accuracy(model: nn.Module, games: othello.OthelloGames) -> float:
    """Share of positions where the top-1 predicted square is legal (:func:`othello_legal_hits`)."""
    return othello_legal_hits(model, games).accuracy


#: ``report(done, total)``, called after each game of a slow scoring loop (chess)
GameCounter = Callable[[int, int], None]


def chess_first_char_hits(model: nn.Module, games: chess_games.ChessGames,
                          progress: GameCounter | None = None) -> GameHits:
    """Per game: move starts where the top-1 next character begins the SAN of a legal move."""
    logits = _logits(model, torch.from_numpy(games.tokens))
    top = logits.argmax(-1).numpy()
    hits, total = np.zeros(games.n_games, np.int64), np.zeros(games.n_games, np.int64)
    starts_GL = games.move_start_mask()
    for g in range(games.n_games):
        positions = np.flatnonzero(starts_GL[g])
        for i, board in zip(positions, chess_games.boards_at(games.texts[g], positions),
                            strict=True):
            firsts = {chess_games.san_first_char(board, m) for m in board.legal_moves}
            hits[g] += chess_games.ALPHABET[top[g, i]] in firsts
            total[g] += 1
        if progress is not None:
            progress(g + 1, games.n_games)
    return GameHits(hits, total)


def chess_first_char_accuracy(model: nn.Module, games: chess_games.ChessGames) -> float:
    """Share of move starts where the top-1 next character begins the SAN of a legal move."""
    return chess_first_char_hits(model, games).accuracy


@torch.no_grad()
def greedy_moves(model: nn.Module, prefixes: list[Tensor], max_new: int = 8) -> list[str]:
    """Greedy-decode one move after each prefix: characters up to the next space or ``.``.

    One batch, right-padded, with the key/value cache: the prefixes are read once and each
    further step feeds one character per row at that row's own position (the attention mask
    hides the padding). A row that has stopped is fed filler that nothing reads.
    """
    device = next(model.parameters()).device
    n, limit = len(prefixes), _n_positions(model)
    lengths = torch.tensor([len(p) for p in prefixes])
    batch = nn.utils.rnn.pad_sequence(prefixes, batch_first=True, padding_value=0)
    mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long()
    out = model(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=True)
    logits = out.logits[torch.arange(n), lengths.to(device) - 1]
    decoded: list[list[int]] = [[] for _ in prefixes]
    active = [True] * n
    stops = {chess_games.PAD_ID, chess_games.ALPHABET.index(".")}
    for step in range(max_new):
        next_ids = logits.argmax(-1).cpu()
        for j in range(n):
            if not active[j]:
                continue
            nxt = int(next_ids[j])
            if nxt in stops:
                active[j] = False
                continue
            decoded[j].append(nxt)
            active[j] = int(lengths[j]) + len(decoded[j]) < limit
        if not any(active) or step == max_new - 1:
            break
        positions = (lengths + step).clamp_max(limit - 1)[:, None]  # of the character fed
        mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
        out = model(input_ids=next_ids[:, None].to(device), attention_mask=mask.to(device),
                    position_ids=positions.to(device), use_cache=True, **_cache_in(model, out))
        logits = out.logits[:, -1]
    return [chess_games.decode(d) for d in decoded]


def _cache_in(model: nn.Module, out: Any) -> dict[str, Any]:
    """The key/value cache of ``out`` as the keyword ``model`` takes it: ``cache`` in recent
    transformers, ``past_key_values`` before."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def model_config(model: nn.Module) -> Any:
    """The Hugging Face config of a game LM."""
    return model.config


def _n_positions(model: nn.Module) -> int:
    return int(model_config(model).n_positions)


def chess_greedy_hits(model: nn.Module, games: chess_games.ChessGames,
                      progress: GameCounter | None = None) -> GameHits:
    """Per game: move starts where the greedily decoded move is exactly the SAN of a legal move
    in the position (check marks included)."""
    hits, total = np.zeros(games.n_games, np.int64), np.zeros(games.n_games, np.int64)
    starts = games.move_start_mask()
    for g in range(games.n_games):
        positions = np.flatnonzero(starts[g])
        prefixes = [torch.from_numpy(games.tokens[g, :i + 1]) for i in positions]
        boards = chess_games.boards_at(games.texts[g], positions)
        for move, board in zip(greedy_moves(model, prefixes), boards, strict=True):
            hits[g] += move in {board.san(m) for m in board.legal_moves}
            total[g] += 1
        if progress is not None:
            progress(g + 1, games.n_games)
    return GameHits(hits, total)


def chess_greedy_accuracy(model: nn.Module, games: chess_games.ChessGames) -> float:
    """Share of move starts where the greedily decoded move is legal (:func:`chess_greedy_hits`)."""
    return chess_greedy_hits(model, games).accuracy


def legal_move_hits(model: nn.Module, game: str, n_games: int, seed: int,
                    greedy_games: int = 30, max_chars: int = 256, greedy_prob: float = 0.8,
                    progress: Callable[[str], GameCounter] | None = None
                    ) -> dict[str, GameHits]:
    """Per-game counts of every legal-move metric of ``game`` on ``n_games`` seeded held-out
    games; chess's greedy decoding runs on the first ``greedy_games`` of them (see
    docs/boardgame.md for the definitions). ``progress(metric)`` gives the counter each slow
    (per-game) loop reports to, e.g. ``StageProgress.counter``."""
    model.eval()
    if game == "othello":
        return othello_scores(model, othello.random_games(n_games, seed))
    games = chess_games.random_games(n_games, seed, max_chars, greedy_prob)
    few = chess_games.random_games(min(greedy_games, n_games), seed, max_chars, greedy_prob)

    def counter(metric: str) -> GameCounter | None:
        return progress(metric) if progress is not None else None

    return {"first_char_legal": chess_first_char_hits(model, games, counter("first_char_legal")),
            "greedy_move_legal": chess_greedy_hits(model, few, counter("greedy_move_legal"))}


def legal_move_accuracy(model: nn.Module, game: str, n_games: int, seed: int,
                        greedy_games: int = 30, max_chars: int = 256, greedy_prob: float = 0.8,
                        progress: Callable[[str], GameCounter] | None = None
                        ) -> dict[str, float]:
    """The accuracies of :func:`legal_move_hits`."""
    hits = legal_move_hits(model, game, n_games, seed, greedy_games, max_chars, greedy_prob,
                           progress)
    return {name: counts.accuracy for name, counts in hits.items()}
