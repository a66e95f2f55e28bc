"""Preference pairs from JSON lines, tokenised for a Hugging Face causal LM.

One object per line: ``{"chosen": TEXT, "rejected": TEXT}``, optionally with ``"prompt"``
(prepended to both). Sequences are right-padded; a text longer than ``max_length`` tokens keeps
its *last* tokens, because the reward reads the last one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.config import ConfigError
from saelab.sarm.train import PairTokens


@dataclass
class Pair:
    chosen: str
    rejected: str
    prompt: str = ""


def read_pairs(path: str | Path) -> list[Pair]:
    """Read ``chosen``/``rejected`` (and optional ``prompt``) pairs; errors name the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number} is not valid JSON ({err})") from err
        if not isinstance(obj, dict) or not isinstance(obj.get("chosen"), str) \
                or not isinstance(obj.get("rejected"), str):
            raise ConfigError(f"{path}:{number} needs string fields 'chosen' and 'rejected', "
                              'e.g. {"chosen": "good answer", "rejected": "bad answer"}')
        pairs.append(Pair(obj["chosen"], obj["rejected"], str(obj.get("prompt", ""))))
    if not pairs:
        raise ConfigError(f"{path} holds no pairs")
    return pairs


def _encode(tokenizer: Any, texts: list[str], max_length: int, append_eos: bool
            ) -> tuple[Tensor, Tensor]:
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if append_eos:
            if tokenizer.eos_token_id is None:
                raise ConfigError("append_eos needs a tokenizer with an EOS token")
            ids.append(tokenizer.eos_token_id)
        if not ids:
            raise ConfigError(f"text {text[:40]!r} tokenises to nothing")
        rows.append(ids[-max_length:])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0)
    ids_t = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids_t[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids_t, mask


def tokenize_pairs(tokenizer: Any, pairs: list[Pair], max_length: int = 512,
                   append_eos: bool = False) -> PairTokens:
    """Right-padded ids and masks of ``prompt + chosen`` and ``prompt + rejected``."""
    c_ids, c_mask = _encode(tokenizer, [p.prompt + p.chosen for p in pairs], max_length,
                            append_eos)
    r_ids, r_mask = _encode(tokenizer, [p.prompt + p.rejected for p in pairs], max_length,
                            append_eos)
    return PairTokens(c_ids, c_mask, r_ids, r_mask)
