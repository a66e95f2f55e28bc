"""Protein sequences as model input: FASTA files through an ESM-style protein language model.

Each sequence is one context: tokenised with the model's tokenizer (CLS … EOS), cropped to
``max_length`` tokens and padded; an attention mask keeps padding out of the model, and the
special positions (CLS, EOS, padding) are left out of the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelab.config import ConfigError, option
from saelab.data.base import DataError
from saelab.sources.base import InputBatch
from saelab.text.packing import special_ids


@dataclass
class ProteinConfig:
    max_length: int = option(256, "tokens per sequence, CLS and EOS included (longer ones are cropped)")
    batch_sequences: int = option(8, "sequences per forward pass")
    max_sequences: int = option(0, "use at most this many sequences (0 = all)")

    def validate(self) -> None:
        if self.max_length < 3 or self.batch_sequences < 1 or self.max_sequences < 0:
            raise ConfigError("need max_length >= 3, batch_sequences >= 1, max_sequences >= 0")


def read_fasta(path: str | Path, limit: int = 0) -> list[tuple[str, str]]:
    """(name, sequence) records of a FASTA file; sequences upper-cased, line breaks joined."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FASTA file {path} does not exist")
    records: list[tuple[str, str]] = []
    name: str | None = None
    parts: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(parts)))
            name, parts = line[1:].strip(), []
        elif name is None:
            raise DataError(f"{path}:{number}: sequence data before the first '>' header; "
                            "is this a FASTA file?")
        else:
            parts.append(line.replace(" ", "").upper())
    if name is not None:
        records.append((name, "".join(parts)))
    records = [(n, s) for n, s in records if s]
    if not records:
        raise DataError(f"{path} holds no FASTA records ('>name' lines followed by sequences)")
    return records[:limit] if limit else records


def protein_batches(sequences: list[str], tokenizer: Any, cfg: ProteinConfig,
                    device: str = "cpu") -> Iterator[InputBatch]:
    """Tokenised, padded batches with attention masks; special positions not kept."""
    cfg.validate()
    exclude = special_ids(tokenizer)
    for start in range(0, len(sequences), cfg.batch_sequences):
        chunk = sequences[start:start + cfg.batch_sequences]
        enc = tokenizer(chunk, padding="max_length", truncation=True,
                        max_length=cfg.max_length, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        keep = mask & ~torch.isin(ids, torch.tensor(exclude, dtype=ids.dtype))
        yield InputBatch({"input_ids": ids.to(device), "attention_mask": mask.long().to(device)},
                         ids, keep)
