"""Packing documents into contexts, and which positions count."""

from __future__ import annotations

import pytest
import torch

from saelab.config import ConfigError
from saelab.text import (
    TextConfig,
    WordTokenizer,
    batch_contexts,
    kept_rows,
    norm_outlier_mask,
    pack_contexts,
    position_mask,
    special_ids,
)

DOCS = ["one two three four five", "six seven", "eight nine ten eleven twelve thirteen"]


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer.from_texts(DOCS)


def test_contexts_start_with_bos_and_keep_the_token_stream(tok: WordTokenizer) -> None:
    cfg = TextConfig(context_size=5)
    contexts = list(pack_contexts(DOCS, tok, cfg))
    assert all(len(c) == 5 and c[0] == tok.bos_token_id for c in contexts)
    stream = [i for d in DOCS for i in [*tok.encode(d), tok.eos_token_id]]
    bodies = [i for c in contexts for i in c[1:]]
    assert bodies == stream[:len(bodies)]  # order kept, EOS after every document
    assert len(stream) - len(bodies) < 4  # only a partial last context is dropped


def test_no_bos_no_separator(tok: WordTokenizer) -> None:
    cfg = TextConfig(context_size=4, prepend_bos=False, separate_documents=False)
    contexts = list(pack_contexts(DOCS, tok, cfg))
    assert [i for c in contexts for i in c] == [i for d in DOCS for i in tok.encode(d)][:12]


def test_batches_and_bad_sizes(tok: WordTokenizer) -> None:
    # 16 stream tokens (13 words + 3 EOS) in bodies of 2 -> 8 contexts
    batches = list(batch_contexts(pack_contexts(DOCS, tok, TextConfig(context_size=3)), 3))
    assert [tuple(b.shape) for b in batches] == [(3, 3), (3, 3), (2, 3)]
    with pytest.raises(ConfigError, match="context_size"):
        list(pack_contexts(DOCS, tok, TextConfig(context_size=1)))


def test_special_positions_are_excluded(tok: WordTokenizer) -> None:
    tokens_BS = torch.tensor([[2, 5, 6, 3], [2, 3, 0, 7]])
    assert special_ids(tok) == [0, 2, 3]
    expected = torch.tensor([[False, True, True, False], [False, False, False, True]])
    assert torch.equal(position_mask(tokens_BS, special_ids(tok)), expected)
    assert position_mask(tokens_BS, []).all()


def test_norm_outliers_are_dropped() -> None:
    acts_ND = torch.ones(10, 4)
    acts_ND[3] *= 50  # an attention-sink-like row
    keep = norm_outlier_mask(acts_ND, max_norm_multiple=10)
    assert keep.tolist() == [i != 3 for i in range(10)]
    assert norm_outlier_mask(acts_ND, 0).all()  # 0 = off


def test_kept_rows_index_points_at_the_source_positions() -> None:
    tokens_BS = torch.tensor([[2, 5, 6], [2, 7, 3]])
    acts_BSD = torch.arange(18.0).reshape(2, 3, 3)
    acts_ND, index_N2 = kept_rows(acts_BSD, tokens_BS, [2, 3])
    assert index_N2.tolist() == [[0, 1], [0, 2], [1, 1]]
    for row, (s, p) in zip(acts_ND, index_N2.tolist(), strict=True):
        assert torch.equal(row, acts_BSD[s, p])
