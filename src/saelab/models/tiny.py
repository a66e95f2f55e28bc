"""A tiny randomly initialised GPT-2 with a word-level tokenizer, saved like a hub model.

Used by the tests and the docs to exercise the real loading path (``load_hf_model(folder)``)
without any download. The weights are random: activations are real model activations, but the
model knows no language.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.text.readers import corpus_path

SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}


def build_tiny_gpt2(folder: str | Path, *, n_layer: int = 2, d_model: int = 32, n_head: int = 2,
                    n_positions: int = 128, vocab_size: int = 2000, seed: int = 0,
                    corpus: str | Path | None = None, split_punctuation: bool = True) -> Path:
    """Train a WordLevel tokenizer on ``corpus`` (default: the bundled English corpus), build
    a GPT-2 with random weights and save both to ``folder``; returns the folder.

    ``split_punctuation=False`` splits on whitespace only, so a token can hold punctuation and
    markup (the explorer's injection tests use that)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    text = Path(corpus or corpus_path()).read_text()
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = (pre_tokenizers.Whitespace() if split_punctuation  # words, punctuation
                         else pre_tokenizers.WhitespaceSplit())
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size,
                                        special_tokens=list(SPECIAL_TOKENS.values()))
    tok.train_from_iterator(text.split("\n\n"), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, **{f"{k}_token": v for k, v in SPECIAL_TOKENS.items()})
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=d_model,
                        n_layer=n_layer, n_head=n_head, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class TinyTokenModel(torch.nn.Module):
    """A plain-PyTorch token model (no transformers): embedding, residual MLP blocks, logits.

    Each position only sees its own token, so it is trivially causal; its module paths are
    ``embed``, ``blocks.0`` … ``blocks.{n-1}`` and ``unembed``. Used to show that any
    ``nn.Module`` taking token ids works with hooks, caches and model evaluation.
    """

    def __init__(self, vocab_size: int, d_model: int = 32, n_blocks: int = 2,
                 d_mlp: int | None = None, seed: int = 0) -> None:
        super().__init__()
        d_mlp = d_mlp or 2 * d_model
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.embed = torch.nn.Embedding(vocab_size, d_model)
            self.blocks = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(d_model, d_mlp), torch.nn.GELU(),
                                    torch.nn.Linear(d_mlp, d_model))
                for _ in range(n_blocks))
            self.unembed = torch.nn.Linear(d_model, vocab_size)

    def forward(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens_BS)
        for block in self.blocks:
            x = x + block(x)
        return self.unembed(x)
