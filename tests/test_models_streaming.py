"""Streaming activations from a model into the trainer, one model pass for several hooks."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import pytest
import torch

from saelab.data.base import DataError
from saelab.models import HookPoint, ModelPass, ModelSource, capture, fit_together, model_sources
from saelab.models.tiny import TinyTokenModel
from saelab.registry import config_from_dict
from saelab.text import TextConfig, WordTokenizer, corpus_path, kept_rows, read_all, special_ids
from saelab.training import TrainConfig, Trainer

TEXT = TextConfig(context_size=16)
HOOKS = ["blocks.0", "blocks.1:input", "blocks.1"]


@pytest.fixture(scope="module")
def model_and_tok() -> tuple[TinyTokenModel, WordTokenizer]:
    tok = WordTokenizer.from_texts(read_all([corpus_path()]), max_vocab=400)
    return TinyTokenModel(len(tok), d_model=24, n_blocks=2).eval(), tok


def make_pass(model_and_tok: tuple[TinyTokenModel, WordTokenizer],
              hooks: list[str]) -> ModelPass:
    model, tok = model_and_tok
    return ModelPass(model, tok, [corpus_path()], hooks, TEXT, batch_contexts=4)


def test_rows_are_the_hooked_activations_at_counted_positions(model_and_tok) -> None:
    model, tok = model_and_tok
    source = ModelSource(make_pass(model_and_tok, ["blocks.0"]), "blocks.0", shuffle_buffer_rows=0)
    assert source.d_in == 24
    batches = list(itertools.islice(source.batches(60), 5))
    expected = []
    for tokens_BS in itertools.islice(source.model_pass.token_batches(), 6):
        with torch.no_grad():
            acts = capture(model, ["blocks.0"], partial(model, tokens_BS))[HookPoint("blocks.0")]
        expected.append(kept_rows(acts, tokens_BS, special_ids(tok))[0])
    assert torch.allclose(torch.cat(batches), torch.cat(expected)[:300])


def test_stream_is_deterministic_and_resumes_exactly(model_and_tok) -> None:
    source = ModelSource(make_pass(model_and_tok, ["blocks.0"]), "blocks.0",
                         shuffle_buffer_rows=500, seed=1)
    first = list(itertools.islice(source.batches(64), 12))
    again = list(itertools.islice(source.batches(64, start_batch=7), 5))
    for a, b in zip(first[7:], again, strict=True):
        assert torch.equal(a, b)
    plain = ModelSource(make_pass(model_and_tok, ["blocks.0"]), "blocks.0", shuffle_buffer_rows=0)
    unshuffled = list(itertools.islice(plain.batches(64), 12))
    assert not torch.equal(first[0], unshuffled[0])  # the buffer mixes rows across contexts
    assert source.sample(100).shape == (100, 24)


def count_forwards(model: TinyTokenModel) -> list[int]:
    calls = [0]
    model.embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_one_model_pass_feeds_every_hook(model_and_tok) -> None:
    _model, tok = model_and_tok
    fresh = TinyTokenModel(len(tok), d_model=24, n_blocks=2).eval()  # a model with its own counter
    calls = count_forwards(fresh)
    shared = model_sources(fresh, tok, [corpus_path()], HOOKS, TEXT, batch_contexts=4,
                           shuffle_buffer_rows=0)
    streams = [shared[h].batches(60) for h in ("blocks.0", "blocks.1:input", "blocks.1")]
    zipped = list(itertools.islice(zip(*streams, strict=True), 8))
    assert calls[0] <= 9  # 8 × 60 rows need ~8 context batches: one forward each, not three
    for i, hook in enumerate(("blocks.0", "blocks.1:input", "blocks.1")):
        alone = ModelSource(make_pass(model_and_tok, [hook]), hook, shuffle_buffer_rows=0)
        for got, want in zip([z[i] for z in zipped], alone.batches(60), strict=False):
            assert torch.allclose(got, want)


def test_consuming_one_shared_source_alone_fails_clearly(model_and_tok) -> None:
    model, tok = model_and_tok
    shared = model_sources(model, tok, [corpus_path()], HOOKS[:2], TEXT, batch_contexts=2,
                           shuffle_buffer_rows=0, max_queued_chunks=3, start_timeout_s=0.2)
    with pytest.raises(DataError, match="has not started reading after 0 s"):
        list(itertools.islice(shared["blocks.0"].batches(32), 50))
    shared = model_sources(model, tok, [corpus_path()], HOOKS[:2], TEXT, batch_contexts=2,
                           shuffle_buffer_rows=0, max_queued_chunks=3)
    lagging = shared["blocks.1:input"].batches(32)
    next(lagging)  # started, then left behind by the same thread
    with pytest.raises(DataError, match="read by this same thread; consume the sources"):
        list(itertools.islice(shared["blocks.0"].batches(32), 50))


def train(sources: dict[str, ModelSource], out: Path) -> list[Trainer]:
    cfg = TrainConfig(total_tokens=1024, batch_size=128, checkpoint_every=0, progress=False,
                      init_samples=256, log_every=4)
    sae_cfg = {"topk": config_from_dict({"architecture": "topk", "k": 4, "expansion": 2})}
    return [Trainer(sae_cfg, cfg, s, out / h.replace(":", "_")) for h, s in sources.items()]


def test_fit_together_equals_training_each_hook_alone(model_and_tok, tmp_path: Path) -> None:
    model, tok = model_and_tok
    shared = model_sources(model, tok, [corpus_path()], HOOKS[:2], TEXT, batch_contexts=4,
                           shuffle_buffer_rows=512)
    together = fit_together(train(shared, tmp_path / "together"))
    for hook, result in zip(HOOKS[:2], together, strict=True):
        alone = model_sources(model, tok, [corpus_path()], [hook], TEXT, batch_contexts=4,
                              shuffle_buffer_rows=512)
        (trainer,) = train(alone, tmp_path / "alone")
        expected = trainer.fit()
        assert torch.equal(result["topk"].W_dec, expected["topk"].W_dec)
