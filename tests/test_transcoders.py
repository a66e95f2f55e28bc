"""Transcoders, skip transcoders and crosscoders: sparse path, scale folding, paired sources,
training, evaluation and metadata."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import saelab
from saelab.architectures.base import StepContext
from saelab.cache import CacheConfig, CacheSource, build_cache
from saelab.data.base import DataError
from saelab.data.paired import open_paired
from saelab.evals.core import CoreEvalConfig, evaluate_on_array
from saelab.models.tiny import TinyTokenModel
from saelab.registry import build
from saelab.text import TextConfig, WordTokenizer, corpus_path, read_all
from saelab.training import TrainConfig, Trainer
from tests.helpers import small_sae

FAST = dict(progress=False, measure_peak=False, log_every=5, lr_warmup_steps=5,
            checkpoint_every=0, init_samples=2048)


def transcoder(skip: bool, seed: int = 1):
    sae = build(saelab.config_from_dict({"architecture": "transcoder", "d_in": 16, "d_out": 12,
                                         "d_sae": 48, "k": 5, "skip": skip}).resolved())
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        if skip:
            sae.W_skip.normal_(0, 0.1, generator=g)
    return sae


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("with_dead", [False, True])
def test_transcoder_sparse_path_equals_dense(skip, with_dead):
    sae = transcoder(skip)
    dense = build(dataclasses.replace(sae.cfg, sparse_kernels=False))
    dense.load_state_dict(copy.deepcopy(sae.state_dict()))
    rows = torch.randn(64, 28, generator=torch.Generator().manual_seed(3)) * 2
    dead = torch.zeros(48, dtype=torch.bool)
    if with_dead:
        dead[::3] = True
    outs = []
    for model in (sae, dense):
        model.train()
        model.zero_grad()
        out = model.training_loss(rows, StepContext(3, 10, dead_mask_M=dead))
        out.total.backward()
        outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o_s, g_s), (o_d, g_d) = outs
    torch.testing.assert_close(o_s.total, o_d.total, rtol=1e-5, atol=1e-5)
    assert ("auxk" in o_s.parts) == with_dead
    assert o_s.extras["explained_variance"] == pytest.approx(o_d.extras["explained_variance"], abs=1e-5)
    for name in g_d:
        torch.testing.assert_close(g_s[name], g_d[name], rtol=1e-4, atol=1e-5)
    if skip:
        assert g_s["W_skip"].abs().sum() > 0


@pytest.mark.parametrize("skip", [False, True])
def test_folding_the_input_scale_gives_identical_codes_on_raw_inputs(skip):
    sae = transcoder(skip)
    x = torch.randn(32, 16)
    scale = 3.7
    before_codes = sae.encode(x * scale)
    before_pred = sae(x * scale) / scale
    sae.fold_input_scale(scale)
    torch.testing.assert_close(sae.encode(x), before_codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), before_pred, rtol=1e-5, atol=1e-5)


def paired_arrays(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    x = g.standard_normal((8192, 16)).astype(np.float32)
    hidden = np.maximum(x @ g.standard_normal((16, 64)).astype(np.float32) - 2, 0)
    y = (hidden @ g.standard_normal((64, 12)).astype(np.float32) / 8 + 0.5 * x[:, :12])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    return tmp_path / "x.npy", tmp_path / "y.npy", x, y.astype(np.float32)


def test_transcoder_learns_the_map_and_its_saved_form_matches_the_log(tmp_path):
    xp, yp, x, y = paired_arrays(tmp_path)
    source = open_paired([xp, yp])
    cfgs = {"tc": saelab.config_from_dict({"architecture": "transcoder", "k": 8, "d_sae": 128,
                                           "d_out": 12}),
            "skip": saelab.config_from_dict({"architecture": "transcoder", "k": 8, "d_sae": 128,
                                             "d_out": 12, "skip": True})}
    trainer = Trainer(cfgs, TrainConfig(total_tokens=8192 * 4, batch_size=512, lr=3e-3, **FAST),
                      source, tmp_path / "run")
    trainer.fit()
    logged = {}
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        import json
        rec = json.loads(line)
        logged[rec["sae"]] = rec["explained_variance"]
    rows = np.concatenate([x, y], axis=1)
    evs = {}
    for name in cfgs:
        sae = saelab.load(tmp_path / "run" / "final" / name)
        assert sae.cfg.d_in == 16 and sae.cfg.d_out == 12
        evs[name] = evaluate_on_array(sae, rows, CoreEvalConfig()).explained_variance
        # the folded SAE on raw rows scores what training logged on scaled rows
        assert evs[name] == pytest.approx(logged[name], abs=0.05)
    assert evs["tc"] > 0.3
    assert evs["skip"] > evs["tc"]  # y has a linear part only the skip connection can carry


@pytest.fixture(scope="module")
def two_hook_cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pair") / "cache"
    tok = WordTokenizer.from_texts(read_all([corpus_path()]), max_vocab=300)
    model = TinyTokenModel(len(tok), d_model=8, n_blocks=2, d_mlp=16)
    build_cache(model, tok, [corpus_path()], ["blocks.0", "blocks.1"], out,
                CacheConfig(batch_contexts=4, max_tokens=3000, memory_limit_mb=16),
                TextConfig(context_size=32), model_name="tiny")
    # the same hook again, shuffled with another seed: same rows, another order
    build_cache(model, tok, [corpus_path()], ["blocks.1"], out / "reshuffled",
                CacheConfig(batch_contexts=4, max_tokens=3000, memory_limit_mb=16, seed=7),
                TextConfig(context_size=32), model_name="tiny")
    return out


def test_paired_caches_match_rows_by_sequence_and_position(two_hook_cache):
    a, b = two_hook_cache / "blocks.0", two_hook_cache / "reshuffled"
    first, second = CacheSource(a), CacheSource(b)
    assert not np.array_equal(first.positions(np.arange(50)), second.positions(np.arange(50)))
    paired = open_paired([a, b])
    rows = np.arange(0, first.n_rows, 7)
    both = paired.take(rows)
    # TinyTokenModel is per-token, so blocks.1's activation is a function of blocks.0's: the
    # same token must give the same pair wherever it sits
    tokens = first.tokens
    pos = first.positions(rows)
    token_ids = tokens[pos[:, 0], pos[:, 1]]
    for tid in np.unique(token_ids)[:20]:
        same = both[token_ids == tid]
        assert np.allclose(same, same[0], atol=1e-6)
    batch = next(paired.batches(64))
    assert batch.shape == (64, 16)


def test_crosscoder_over_two_layers_trains_with_metadata(two_hook_cache, tmp_path):
    source = open_paired([two_hook_cache / "blocks.0", two_hook_cache / "blocks.1"])
    cfgs = {"xc": saelab.config_from_dict({"architecture": "crosscoder", "k": 4, "expansion": 4})}
    trainer = Trainer(cfgs, TrainConfig(total_tokens=256 * 20, batch_size=256, lr=3e-3, **FAST),
                      source, tmp_path / "run")
    trainer.fit()
    sae = saelab.load(tmp_path / "run" / "final" / "xc")
    assert sae.cfg.n_layers == 2 and sae.cfg.layer_hooks == ["blocks.0", "blocks.1"]
    assert sae.cfg.model_name == "tiny"
    assert sae.layer_decoder_norms().shape == (64, 2)  # expansion 4 of the 16-wide row
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "explained_variance_layer0" in text and "explained_variance_layer1" in text


def test_transcoder_metadata_from_paired_caches(two_hook_cache, tmp_path):
    source = open_paired([two_hook_cache / "blocks.0", two_hook_cache / "blocks.1"])
    cfgs = {"tc": saelab.config_from_dict({"architecture": "transcoder", "k": 4, "expansion": 2})}
    Trainer(cfgs, TrainConfig(total_tokens=512, batch_size=256, **FAST), source,
            tmp_path / "run").fit()
    sae = saelab.load(tmp_path / "run" / "final" / "tc")
    assert (sae.cfg.input_hook, sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.0", "blocks.1", "tiny")


def test_pairing_caches_of_different_inputs_is_refused(two_hook_cache, tmp_path):
    tok = WordTokenizer.from_texts(read_all([corpus_path()]), max_vocab=300)
    model = TinyTokenModel(len(tok), d_model=8, n_blocks=2)
    other = tmp_path / "other"
    build_cache(model, tok, [corpus_path()], ["blocks.1"], other,
                CacheConfig(batch_contexts=4, max_tokens=3000, memory_limit_mb=16, seed=5),
                TextConfig(context_size=16))
    with pytest.raises(DataError):
        open_paired([two_hook_cache / "blocks.0", other])


def test_crosscoder_needs_equal_layer_blocks():
    with pytest.raises(saelab.config.ConfigError, match="n_layers"):
        small_sae("crosscoder", d_in=15)


def test_train_command_pairs_caches_with_data_pair(two_hook_cache, tmp_path, capsys):
    from saelab.cli import main

    assert main(["train", "--data", str(two_hook_cache / "blocks.0"), "--data-pair",
                 str(two_hook_cache / "blocks.1"), "--arch", "transcoder", "--k", "4",
                 "--expansion", "2", "--skip", "--total-tokens", "512", "--batch-size", "256",
                 "--no-progress", "--no-measure-peak", "--out", str(tmp_path / "run")]) == 0
    sae = saelab.load(tmp_path / "run" / "final" / "transcoder")
    assert sae.cfg.skip and sae.cfg.input_hook == "blocks.0" and sae.cfg.hook_name == "blocks.1"
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "final" / "transcoder"), "--data",
                 str(two_hook_cache / "blocks.0"), "--data-pair", str(two_hook_cache / "blocks.1"),
                 "--no-plot"]) == 0
    assert '"l0": 4.0' in capsys.readouterr().out


def test_eval_model_splices_the_prediction_at_the_output_hook():
    from saelab.evals.model import ModelEvalConfig, evaluate_on_model
    from saelab.metrics.core import explained_variance
    from saelab.models.hooks import capture

    model = TinyTokenModel(50, d_model=8, n_blocks=2, d_mlp=16).eval()
    tokens = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    sae = build(saelab.config_from_dict({"architecture": "transcoder", "d_in": 8, "d_out": 8,
                                         "d_sae": 32, "k": 4, "skip": True}).resolved())
    with torch.no_grad():
        sae.W_skip.normal_(0, 0.3)
    metrics, downstream, _ = evaluate_on_model(
        model, sae, "blocks.1", [tokens], [], ModelEvalConfig(), input_hook="blocks.1:input")
    with torch.no_grad():
        acts = capture(model, ["blocks.1:input", "blocks.1"], lambda: model(tokens))
        x = acts[next(p for p in acts if p.where == "input")].reshape(-1, 8)
        y = acts[next(p for p in acts if p.where == "output")].reshape(-1, 8)
        expected = explained_variance(y, sae(x))
        # the splice: the model with blocks.1's output replaced by the prediction
        h = model.embed(tokens)
        h = h + model.blocks[0](h)
        logits = model.unembed(h + sae(h.reshape(-1, 8)).reshape(h.shape))
    assert metrics.explained_variance == pytest.approx(expected, abs=1e-6)
    from saelab.evals.model import per_token_ce

    assert downstream.ce_sae == pytest.approx(float(per_token_ce(logits, tokens).mean()), abs=1e-6)
