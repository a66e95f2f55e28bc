"""A minimal word-level tokenizer for models that are not Hugging Face models.

It has the small part of the transformers tokenizer interface that saelab uses (calling it on
a list of texts, the special-token ids, ``decode``), so custom ``nn.Module`` models can be
cached, streamed and evaluated without transformers installed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

_WORD = re.compile(r"\w+|[^\w\s]")
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


class WordTokenizer:
    """Words and punctuation marks as tokens; ids 0–3 are <pad>, <unk>, <bos>, <eos>."""

    def __init__(self, vocab: Sequence[str], name: str = "word-tokenizer") -> None:
        words = [w for w in vocab if w not in SPECIALS]
        self.vocab = [*SPECIALS, *words]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.name_or_path = name
        self.pad_token_id, self.unk_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2, 3

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_vocab: int = 5000) -> WordTokenizer:
        """The ``max_vocab`` − 4 most frequent words of ``texts`` plus the special tokens."""
        counts = Counter(word for text in texts for word in _WORD.findall(text))
        return cls([w for w, _ in counts.most_common(max_vocab - len(SPECIALS))])

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, self.unk_token_id) for w in _WORD.findall(text)]

    def __call__(self, texts: str | list[str], add_special_tokens: bool = False,
                 **_: Any) -> dict[str, list[list[int]] | list[int]]:
        """``{"input_ids": ...}`` like transformers; special tokens are never added here."""
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)}
        return {"input_ids": [self.encode(t) for t in texts]}

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] if 0 <= i < len(self.vocab) else "<unk>" for i in ids)
