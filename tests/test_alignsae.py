"""AlignSAE: each loss term against hand values, the wiring of the total loss with the paper's
default weights, the concept-swap edit, stage 2 against stage 1 and exact resume."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from saelab.alignsae.evaluate import EV_TOLERANCE
from saelab.alignsae.metrics import free_only_reconstruction, reconstruction, slot_accuracy
from saelab.alignsae.swap import swap_codes, swap_delta, swapped_top_tokens
from saelab.architectures.alignsae import (
    AlignSAE,
    AlignSAEConfig,
    alignment_loss,
    independence_loss,
    orthogonality_loss,
    reconstruction_loss,
    sparsity_loss,
    value_loss,
)
from saelab.architectures.base import StepContext
from saelab.biography.lm import BioLMConfig, block_hook, build_model, pad_right
from saelab.biography.task import VOCAB, make_people, questions
from saelab.config import ConfigError
from saelab.data.arrays import ArrayFileSource
from saelab.io import load, save
from saelab.models.hooks import HookPoint, capture
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer

T = torch.tensor


# ---------------------------------------------------------------------------- loss terms


def test_reconstruction_is_the_mean_squared_error_over_rows_and_dimensions():
    x = T([[1.0, 2.0], [3.0, 4.0]])
    xhat = T([[1.0, 0.0], [3.0, 5.0]])
    assert float(reconstruction_loss(x, xhat)) == pytest.approx((0 + 4 + 0 + 1) / 4)


def test_sparsity_is_the_mean_absolute_free_code():
    assert float(sparsity_loss(T([[1.0, -2.0], [0.0, 3.0]]))) == pytest.approx(6 / 4)


def test_alignment_is_the_mse_to_the_one_hot_of_the_asked_relation():
    slots = T([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    # row 2 asks relation 1: errors 0.5² at slot 0 and (0.5 − 1)² at slot 1
    assert float(alignment_loss(slots, T([0, 1]))) == pytest.approx(0.5 / 6)
    assert float(alignment_loss(slots, T([0, 0]))) == pytest.approx((0.25 + 0.25) / 6)


def test_independence_sums_squared_off_diagonal_covariances():
    free = T([[1.0, 2.0], [-1.0, -2.0]])  # mean 0; Cov = [[1, 2], [2, 4]] (1/B)
    assert float(independence_loss(free)) == pytest.approx(2 * 2.0 ** 2)
    uncorrelated = T([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert float(independence_loss(uncorrelated)) == pytest.approx(0.0, abs=1e-7)


def test_independence_equals_the_explicit_covariance_form():
    z = torch.randn(9, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    centred = z - z.mean(0)
    cov = centred.T @ centred / z.shape[0]
    explicit = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    assert float(independence_loss(z)) == pytest.approx(float(explicit), rel=1e-10)


def test_orthogonality_sums_squared_slot_free_covariances():
    slots = T([[1.0], [-1.0]])
    free = T([[2.0, 5.0], [-2.0, 5.0]])  # Cov(slot, free) = [2, 0]
    assert float(orthogonality_loss(slots, free)) == pytest.approx(4.0)


def test_value_loss_is_cross_entropy_of_the_asked_slots_head():
    cfg = AlignSAEConfig(d_in=2, d_sae=5, n_relations=2, stage=2, value_vocab=2,
                         value_hidden=1).resolved()
    sae = AlignSAE(cfg)
    with torch.no_grad():
        sae.head_w1.copy_(T([[1.0], [-1.0]]))  # head 1 reads −slot
        sae.head_b1.zero_()
        for w in sae.head_W2:
            w.copy_(T([[0.0, 1.0]]))
        sae.head_b2.zero_()
    codes = T([[0.0, 0.0, 0.0, math.log(3.0), 5.0],    # asks relation 0: slot 0 = ln 3
               [0.0, 0.0, 0.0, 7.0, -math.log(3.0)]])  # asks relation 1: −slot 1 = ln 3
    logits = sae.value_logits(codes, T([0, 1]))
    assert torch.allclose(logits, T([[0.0, math.log(3.0)], [0.0, math.log(3.0)]]))
    # softmax([0, ln 3]) = [1/4, 3/4]
    assert float(value_loss(logits, T([1, 0]))) == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2)


def _rows(n: int, d: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, d, generator=g),
                      torch.randint(0, 6, (n, 1), generator=g).float(),
                      torch.randint(0, vocab, (n, 1), generator=g).float()], 1)


def test_the_paper_default_weights_and_the_total_of_stage_2():
    cfg = AlignSAEConfig()
    assert (cfg.lambda_rec, cfg.lambda_sparse, cfg.lambda_align, cfg.lambda_indep,
            cfg.lambda_ortho, cfg.lambda_value) == (1.0, 1e-3, 1.0, 1e-2, 1e-2, 0.5)
    sae = AlignSAE(AlignSAEConfig(d_in=8, d_sae=20, stage=2, value_vocab=11).resolved())
    rows = _rows(16, 8, 11)
    out = sae.training_loss(rows, StepContext(0, 1))
    x, rel, tok = rows[:, :8], rows[:, 8].long(), rows[:, 9].long()
    z = sae.encode(x)
    free, slots = z[:, :14], z[:, 14:]
    expected = (reconstruction_loss(x, sae.decode(z)) + 1e-3 * sparsity_loss(free)
                + alignment_loss(slots, rel) + 1e-2 * independence_loss(free)
                + 1e-2 * orthogonality_loss(slots, free)
                + 0.5 * value_loss(sae.value_logits(z, rel), tok))
    assert float(out.total) == pytest.approx(float(expected), rel=1e-6)
    stage1 = AlignSAE(dataclasses.replace(sae.cfg, stage=1))
    stage1.load_state_dict(sae.state_dict())
    only_rec = stage1.training_loss(rows, StepContext(0, 1))
    assert float(only_rec.total) == pytest.approx(float(reconstruction_loss(x, sae.decode(z))))


def test_scaled_labels_are_refused_with_the_fix():
    sae = AlignSAE(AlignSAEConfig(d_in=8, d_sae=20, stage=2, value_vocab=11).resolved())
    with pytest.raises(ConfigError, match="normalize_inputs=False"):
        sae.training_loss(_rows(4, 8, 11) * 1.37, StepContext(0, 1))


def test_save_and_load_keep_the_value_heads(tmp_path):
    sae = AlignSAE(AlignSAEConfig(d_in=8, d_sae=20, stage=2, value_vocab=11).resolved())
    back = load(save(sae, tmp_path / "a"))
    for (name, a), b in zip(sae.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------- the swap


def test_swap_codes_zero_the_source_and_set_the_target():
    z = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = swap_codes(z, T([0, 2]), T([1, 0]), T([9.0, 7.0]))
    assert torch.equal(out, T([[0.0, 9.0, 3.0], [7.0, 5.0, 0.0]]))
    assert torch.equal(z, T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))  # not in place


def test_swap_changes_the_hooked_activation_by_exactly_decode_difference():
    lm = build_model(BioLMConfig(n_layer=2, d_model=16, n_head=2, seed=3))
    sae = AlignSAE(AlignSAEConfig(d_in=16, d_sae=40).resolved())
    qs = questions(make_people(3, seed=0), held_out=True)[:7]
    prompts = [q.prompt for q in qs]
    ids, lengths = pad_right(prompts)
    pos, rows = lengths - 1, torch.arange(len(prompts))
    src = torch.tensor([sae.slot_latent(q.relation) for q in qs])
    tgt = torch.tensor([sae.slot_latent((q.relation + 1) % 6) for q in qs])
    alpha = torch.full((len(qs),), 2.0)

    def block1_input() -> torch.Tensor:
        point = HookPoint.parse("transformer.h.1:input")
        return capture(lm, [point], lambda: lm(input_ids=ids))[point]

    clean = block1_input()
    spy: list[torch.Tensor] = []
    handle = lm.transformer.h[1].register_forward_pre_hook(lambda _m, a: spy.append(a[0]))
    try:
        swapped_top_tokens(lm, 0, sae, prompts, src, tgt, alpha)
    finally:
        handle.remove()
    edited = spy[0]
    h = clean[rows, pos]
    expected = swap_delta(sae, h, src, tgt, alpha)
    z = sae.encode(h)
    by_hand = (alpha - z[rows, tgt])[:, None] * sae.W_dec[tgt] - z[rows, src][:, None] * \
        sae.W_dec[src]
    assert torch.allclose(expected, by_hand, atol=1e-5)
    assert torch.allclose(edited[rows, pos] - h, expected, atol=1e-5)
    untouched = torch.ones(edited.shape[:2], dtype=torch.bool)
    untouched[rows, pos] = False
    assert torch.equal(edited[untouched], clean[untouched])
    assert block_hook(0) == "transformer.h.0"


# ---------------------------------------------------------------------------- training


def _relation_data(tmp_path, n=768, d=16, seed=0):
    """Activations = a direction per relation + a direction per answer token + noise."""
    g = np.random.default_rng(seed)
    rel = g.integers(0, 6, n)
    tok = g.integers(0, 20, n)
    rel_dirs, tok_dirs = g.normal(size=(6, d)), g.normal(size=(20, d))
    acts = rel_dirs[rel] + 0.7 * tok_dirs[tok] + 0.1 * g.normal(size=(n, d))
    rows = np.concatenate([acts, rel[:, None], tok[:, None]], 1).astype(np.float32)
    path = tmp_path / "rows.npy"
    np.save(path, rows)
    return path, torch.from_numpy(acts.astype(np.float32)), torch.from_numpy(rel)


def _train(path, out, cfg, steps, until=None):
    train = TrainConfig(total_tokens=steps * 64, batch_size=64, lr=3e-3, lr_warmup_steps=0,
                        lr_decay_start=1.0, normalize_inputs=False, init_samples=256,
                        dead_after_tokens=steps * 64, checkpoint_every=10, log_every=10,
                        log_proxies=False, measure_peak=False, progress=False)
    trainer = Trainer({"alignsae": cfg}, train, ArrayFileSource(path), out)
    return trainer.fit(until_step=until)["alignsae"]


def test_stage_2_keeps_reconstruction_within_tolerance_of_stage_1(tmp_path):
    path, acts, rel = _relation_data(tmp_path)
    cfg1 = AlignSAEConfig(d_sae=38, stage=1, value_vocab=20, value_hidden=16)
    stage1 = _train(path, tmp_path / "s1", cfg1, 150)
    cfg2 = dataclasses.replace(cfg1, stage=2, init_from=str(tmp_path / "s1" / "final" /
                                                          "alignsae"))
    stage2 = _train(path, tmp_path / "s2", cfg2, 200)
    ev1 = reconstruction(stage1, acts)["explained_variance"]
    ev2 = reconstruction(stage2, acts)["explained_variance"]
    assert ev1 > 0.95
    assert ev2 >= ev1 - EV_TOLERANCE, (ev1, ev2)
    assert slot_accuracy(stage2, acts, rel) > 0.8  # chance: 1/6
    assert slot_accuracy(stage1, acts, rel) < 0.6  # stage 1's last latents are not slots
    # the free latents alone still carry all but the relation part of the activation
    assert free_only_reconstruction(stage2, acts)["explained_variance"] > 0.3


def test_stage_2_resumes_exactly(tmp_path):
    path, _, _ = _relation_data(tmp_path, n=256)
    cfg = AlignSAEConfig(d_sae=22, stage=2, value_vocab=20, value_hidden=8)
    whole = _train(path, tmp_path / "a", cfg, 30)
    _train(path, tmp_path / "b", cfg, 30, until=20)
    resumed = _train(path, tmp_path / "b", cfg, 30)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_vocabulary_round_trips_a_question():
    q = questions(make_people(2, seed=1), held_out=False)[0]
    assert VOCAB.encode(VOCAB.decode(q.prompt)) == q.prompt
