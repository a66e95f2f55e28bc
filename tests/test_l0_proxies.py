"""Correct-L0 proxies and seed statistics against hand-computed values."""

import json
import math

import pytest
import torch

from saelab.metrics.proxies import (
    ProxyAccumulator,
    decoder_pairwise_cosine,
    nth_decoder_projection,
    proxy_metrics,
)
from saelab.metrics.seeds import cross_seed_consistency, mean_ci, summarise_seeds


def test_decoder_pairwise_cosine_by_hand():
    # rows e1, e2, (e1 + e2)/√2 scaled by 3: |cos| pairs 0, 1/√2, 1/√2 → mean √2/3
    decoder = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert decoder_pairwise_cosine(decoder) == pytest.approx(math.sqrt(2) / 3, abs=1e-6)
    # signs do not matter: |cos|
    assert decoder_pairwise_cosine(decoder * torch.tensor([[1.0], [-1.0], [-1.0]])) == pytest.approx(
        math.sqrt(2) / 3, abs=1e-6)


def test_nth_decoder_projection_by_hand():
    acts = torch.tensor([[3.0, 1.0], [2.0, 5.0]])
    # identity decoder, no bias: Z = x, flattened desc [5, 3, 2, 1]; n = 1, B = 2 → entry 2
    assert nth_decoder_projection(acts, torch.eye(2), torch.zeros(2), n=1) == 2.0
    # rows are normalised first; b_dec is subtracted: Z = [[2, 0], [1, 4]] → [4, 2, 1, 0] → 1
    decoder = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert nth_decoder_projection(acts, decoder, torch.tensor([1.0, 1.0]), n=1) == 1.0


def test_nth_decoder_projection_three_latents_by_hand():
    # 3 latents, 2 rows: Z = x·Wᵀ with W rows e1, e2, (e1+e2)/√2
    acts = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    decoder = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = 1 / math.sqrt(2)
    z = sorted([1.0, 2.0, 3 * s, 4.0, 0.0, 4 * s], reverse=True)
    assert nth_decoder_projection(acts, decoder, torch.zeros(2), n=1) == pytest.approx(z[2])
    assert nth_decoder_projection(acts, decoder, torch.zeros(2), n=2) == pytest.approx(z[4])
    # default n = half the latents = 1
    assert nth_decoder_projection(acts, decoder, torch.zeros(2)) == pytest.approx(z[2])


def test_nth_decoder_projection_rejects_bad_n():
    with pytest.raises(ValueError, match="fewer than the 2 latents"):
        nth_decoder_projection(torch.ones(4, 2), torch.eye(2), torch.zeros(2), n=2)


def test_proxy_accumulator_does_not_depend_on_caller_batching():
    gen = torch.Generator().manual_seed(0)
    acts, decoder, bias = torch.randn(3000, 8, generator=gen), torch.randn(20, 8, generator=gen), torch.randn(8, generator=gen)
    whole = proxy_metrics(acts, decoder, bias, n=7, batch_size=500)
    acc = ProxyAccumulator(decoder, bias, n=7, batch_size=500)
    for chunk in acts.split(333):
        acc.update(chunk)
    split = acc.compute()
    assert split == whole
    per_batch = [nth_decoder_projection(b, decoder, bias, 7) for b in acts.split(500)]
    assert whole.nth_decoder_projection == pytest.approx(sum(per_batch) / len(per_batch))


def test_training_c_dec_uses_a_fixed_subset_only_above_the_limit():
    from types import SimpleNamespace

    from saelab.metrics.matching import decoder_pairwise_cosine
    from saelab.metrics.proxies import TRAINING_C_DEC_ROWS, training_c_dec_rows, training_proxies

    g = torch.Generator().manual_seed(1)
    small = SimpleNamespace(W_dec=torch.randn(64, 8, generator=g), b_dec=torch.zeros(8))
    acts = torch.randn(32, 8, generator=g)
    assert training_proxies(small, acts)["c_dec"] == decoder_pairwise_cosine(small.W_dec)

    m = TRAINING_C_DEC_ROWS + 904
    # a decoder whose first half of rows is nearly one direction: the subset must be random
    W = torch.randn(m, 8, generator=g)
    W[: m // 2] = torch.tensor([1.0] + [0.0] * 7) + 0.01 * W[: m // 2]
    big = SimpleNamespace(W_dec=W, b_dec=torch.zeros(8))
    rows = training_c_dec_rows(m)
    assert rows is not None and len(set(rows.tolist())) == TRAINING_C_DEC_ROWS
    assert torch.equal(rows, training_c_dec_rows(m))  # the same rows every log line
    logged = training_proxies(big, torch.randn(32, 8, generator=g))["c_dec"]
    assert logged == decoder_pairwise_cosine(W[rows])
    assert logged == pytest.approx(decoder_pairwise_cosine(W), abs=0.01)


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, t_{0.975, 2} = 4.302653
    assert ci.mean == 2.0 and ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0]).half_width)
    summary = summarise_seeds([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}])
    assert summary["a"].mean == 2.0 and summary["b"].half_width == 0.0


def test_cross_seed_consistency_of_permuted_and_flipped_decoders():
    gen = torch.Generator().manual_seed(1)
    decoder = torch.linalg.qr(torch.randn(12, 12, generator=gen))[0]
    reversed_flipped = -decoder.flip(0)
    same = cross_seed_consistency([decoder, decoder, decoder])
    assert same.stability.mean == pytest.approx(1.0) and same.orderedness.mean == pytest.approx(1.0)
    assert len(same.pairs) == 3
    rev = cross_seed_consistency([decoder, reversed_flipped])
    assert rev.stability.mean == pytest.approx(1.0, abs=1e-6)
    assert rev.orderedness.mean == pytest.approx(-1.0)


def test_training_log_has_the_proxies(tmp_path):
    from saelab.data.toy import ToySource
    from saelab.registry import config_from_dict
    from saelab.toy import ToyConfig, ToyModel
    from saelab.training import TrainConfig, Trainer

    toy = ToyModel(ToyConfig.chanin_small())
    train = TrainConfig(total_tokens=20 * 256, batch_size=256, log_every=10, progress=False,
                        measure_peak=False, checkpoint_every=0, init_samples=512)
    cfg = config_from_dict({"architecture": "topk", "k": 2, "d_sae": 5})
    Trainer({"t": cfg}, train, ToySource(toy), tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert records and all(0 <= r["c_dec"] <= 1 and math.isfinite(r["s_n_dec"]) for r in records)
