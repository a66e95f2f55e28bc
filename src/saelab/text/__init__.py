"""Text for models: read documents, tokenise and pack into contexts, and mask positions."""

from saelab.text.mask import kept_rows, norm_outlier_mask, position_mask
from saelab.text.packing import (
    TextConfig,
    batch_contexts,
    bos_id,
    pack_contexts,
    separator_id,
    special_ids,
    token_batches,
    tokenizer_name,
)
from saelab.text.readers import corpus_path, read_all, read_documents
from saelab.text.word_tokenizer import WordTokenizer

__all__ = [
    "TextConfig",
    "WordTokenizer",
    "batch_contexts",
    "bos_id",
    "corpus_path",
    "kept_rows",
    "norm_outlier_mask",
    "pack_contexts",
    "position_mask",
    "read_all",
    "read_documents",
    "separator_id",
    "special_ids",
    "token_batches",
    "tokenizer_name",
]
