"""Where a feature store's rows come from, and the model behind them.

- :class:`CacheRows`: an activation cache (``saelab cache`` or the board-game demo), read in
  stored order with every row's (sequence, position) and the contexts' token ids.
- :class:`ModelRows`: a model run over text (``--model/--hook/--text``), batch by batch; the
  token ids are returned with each batch so the builder can keep them.

:class:`ModelSpec` names the model (a Hugging Face model or a board-game LM) so the builder can
compute logit effects and the explorer can run typed text live; :func:`load_model` loads it
with a :class:`TokenCodec` that turns text into token ids and ids into display strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from saelab.cache import CacheSource, read_manifest
from saelab.config import ConfigError
from saelab.models.hf import token_forward
from saelab.models.hooks import HookPoint, capture
from saelab.text.mask import kept_rows
from saelab.text.packing import TextConfig, bos_id, special_ids, token_batches

GAME_TOKENIZERS = {"othello-moves": "othello", "chess-chars": "chess"}


@dataclass
class RowBatch:
    """One batch of rows: activations, their (sequence, position), and new contexts' tokens."""

    number: int
    acts_ND: np.ndarray  # float32
    seqpos_N2: np.ndarray  # int64 (global context index, position)
    tokens_BS: np.ndarray | None  # int32 token ids of contexts first seen in this batch


class RowStream(Protocol):
    context_size: int
    width: int

    def batches(self, start: int) -> Iterator[RowBatch]:
        """Batches ``start, start + 1, ...`` (deterministic, so a resumed build skips ahead)."""

    def total_rows(self) -> int | None:
        """Rows in the stream if known in advance (for progress), else None."""


class CacheRows:
    """Rows of a finished activation cache, in stored order (one sequential read)."""

    def __init__(self, path: str | Path, batch_rows: int = 4096, verify: bool = True) -> None:
        self.source = CacheSource(path, shuffle=False, verify=verify)
        self.manifest = self.source.manifest
        self.batch_rows = batch_rows
        self.context_size = self.manifest.context_size
        self.width = self.manifest.width

    def total_rows(self) -> int:
        return self.manifest.n_rows

    def tokens(self) -> np.ndarray:
        return self.source.tokens

    def batches(self, start: int) -> Iterator[RowBatch]:
        n = self.manifest.n_rows
        for number, lo in enumerate(range(0, n, self.batch_rows)):
            if number < start:
                continue
            rows = np.arange(lo, min(n, lo + self.batch_rows))
            yield RowBatch(number, self.source.read_rows(int(rows[0]), int(rows[-1]) + 1),
                           self.source.positions(rows), None)


class ModelRows:
    """Rows read at one hook while ``model`` runs over text, one batch of contexts at a time."""

    def __init__(self, model: nn.Module, tokenizer: Any, sources: Sequence[str | Path],
                 hook: str, text: TextConfig, *, batch_contexts: int = 8, max_tokens: int = 0,
                 device: str = "cpu", forward: Callable[[Tensor], Any] | None = None) -> None:
        text.validate()
        self.model, self.tokenizer, self.sources = model, tokenizer, list(sources)
        self.hook = HookPoint.parse(hook)
        self.text, self.batch_contexts, self.device = text, batch_contexts, device
        self.max_contexts = -(-max_tokens // text.context_size) if max_tokens else 0
        self.forward = forward or token_forward(model)
        self.exclude = special_ids(tokenizer) if text.exclude_special else []
        self.context_size = text.context_size
        first = next(self._token_batches(), None)
        if first is None:
            raise ConfigError(f"the text in {self.sources} is too short for one context of "
                              f"{text.context_size} tokens")
        self.width = int(self._acts(first[:1]).shape[-1])

    def total_rows(self) -> int | None:
        return self.max_contexts * self.context_size or None

    def _token_batches(self) -> Iterator[Tensor]:
        return token_batches(self.sources, self.tokenizer, self.text, self.batch_contexts,
                             self.max_contexts)

    def _acts(self, tokens_BS: Tensor) -> Tensor:
        with torch.no_grad():
            got = capture(self.model, [self.hook],
                          lambda: self.forward(tokens_BS.to(self.device)))
        return got[self.hook].float().cpu()

    def batches(self, start: int) -> Iterator[RowBatch]:
        first_context = 0
        for number, tokens_BS in enumerate(self._token_batches()):
            if number >= start:  # earlier batches are already in the store's work files
                acts_ND, index_N2 = kept_rows(self._acts(tokens_BS), tokens_BS, self.exclude,
                                              self.text.max_norm_multiple)
                seqpos = index_N2.numpy().astype(np.int64)
                seqpos[:, 0] += first_context
                yield RowBatch(number, acts_ND.numpy(), seqpos,
                               tokens_BS.numpy().astype(np.int32))
            first_context += tokens_BS.shape[0]


# ---------------------------------------------------------------------------- models and codecs


@dataclass
class ModelSpec:
    """The model behind a store: ``kind`` 'hf' (a Hugging Face id or folder), 'game' (a
    board-game LM: the game name for the shipped model, or a folder) or 'none'."""

    kind: Literal["hf", "game", "none"]
    name: str = ""
    hook: str = ""
    game: str = ""
    prepend_bos: bool = True  # hf: typed text starts with BOS like the build's contexts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)

    @classmethod
    def of_cache(cls, path: str | Path) -> ModelSpec:
        """What a cache's manifest says about its model (game caches name their tokenizer)."""
        manifest = read_manifest(path)
        game = GAME_TOKENIZERS.get(manifest.tokenizer, "")
        if game:
            return cls("game", manifest.model or game, manifest.hook, game)
        if not manifest.model:
            return cls("none", hook=manifest.hook)
        text = manifest.info.get("text", {}) if isinstance(manifest.info, dict) else {}
        return cls("hf", manifest.model, manifest.hook,
                   prepend_bos=bool(text.get("prepend_bos", True)))


class TokenCodec(Protocol):
    special: frozenset[int]  # ids left out of the statistics (BOS, EOS, ...), as in the build

    def encode(self, text: str) -> list[int]:
        """Token ids of typed text, as the model reads it."""

    def token_text(self, ids: Sequence[int]) -> list[str]:
        """How each token id is shown."""


class HFCodec:
    def __init__(self, tokenizer: Any, prepend_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.bos = bos_id(tokenizer) if prepend_bos else None
        self.special = frozenset(special_ids(tokenizer))

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids if self.bos is None else [self.bos, *ids]

    def token_text(self, ids: Sequence[int]) -> list[str]:
        """Each token as it reads inside a text, with the space before it when it starts a
        word: decode([anchor, id]) minus decode([anchor]) (GPT-2 BPE, WordPiece ``##``
        pieces and word-level tokenizers all come out right)."""
        anchor = self._anchor()
        if anchor is None:
            return [self.tokenizer.decode([int(i)]) for i in ids]
        head = self.tokenizer.decode([anchor])
        out = []
        for i in ids:
            pair = self.tokenizer.decode([anchor, int(i)])
            out.append(pair[len(head):] if pair.startswith(head) else
                       self.tokenizer.decode([int(i)]))
        return out

    def _anchor(self) -> int | None:
        ids = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        return int(ids[0]) if len(ids) == 1 else None


class OthelloCodec:
    """Moves as square names: ``"d3 c5 f6"``."""

    special: frozenset[int] = frozenset()

    def encode(self, text: str) -> list[int]:
        from saelab.boardgame import othello

        squares = [othello.parse_square(w) for w in text.replace(",", " ").split()]
        return [int(t) for t in othello.squares_to_tokens(np.array(squares, dtype=np.int64))]

    def token_text(self, ids: Sequence[int]) -> list[str]:
        from saelab.boardgame import othello

        squares = othello.tokens_to_squares(np.asarray(ids, dtype=np.int64))
        return [" " + othello.square_name(int(s)) if s >= 0 else " ·" for s in squares]


class ChessCodec:
    """PGN movetext characters: ``";1.e4 e5 2.Nf3"``."""

    special: frozenset[int] = frozenset()

    def encode(self, text: str) -> list[int]:
        from saelab.boardgame import chess_games

        return [int(i) for i in chess_games.encode(text)]

    def token_text(self, ids: Sequence[int]) -> list[str]:
        from saelab.boardgame import chess_games

        return [chess_games.ALPHABET[int(i)] for i in ids]


@dataclass
class LoadedSpec:
    """A loaded model with its codec and the causal-LM flag (for logit effects)."""

    spec: ModelSpec
    model: nn.Module
    codec: TokenCodec
    is_causal_lm: bool
    max_positions: int

    def hook_acts(self, ids: Sequence[int]) -> Tensor:
        """Activations (S × D) at the spec's hook for one sequence of token ids."""
        tokens = torch.tensor([list(ids)[:self.max_positions]], dtype=torch.int64)
        forward = token_forward(self.model)
        with torch.no_grad():
            got = capture(self.model, [self.spec.hook], lambda: forward(tokens))
        return next(iter(got.values()))[0].float()


def load_model(spec: ModelSpec) -> LoadedSpec:
    """Load the model a spec names (raises ModelLoadError / FileNotFoundError when missing)."""
    if spec.kind == "game":
        from saelab.boardgame import lm

        model, game = lm.load_game_lm(spec.name or spec.game)
        codec: TokenCodec = OthelloCodec() if game == "othello" else ChessCodec()
        return LoadedSpec(spec, model, codec, True, int(lm.model_config(model).n_positions))
    if spec.kind == "hf":
        from saelab.models.hf import load_hf_model

        loaded = load_hf_model(spec.name)
        limit = int(getattr(loaded.model.config, "max_position_embeddings", 0)
                    or getattr(loaded.model.config, "n_positions", 0) or 512)
        return LoadedSpec(spec, loaded.model, HFCodec(loaded.tokenizer, spec.prepend_bos),
                          loaded.is_causal_lm, limit)
    raise ConfigError("this store records no model; pass --model (and --hook) to run text live")
