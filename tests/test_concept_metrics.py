"""Concept metrics against hand-computed values on tiny inputs, including undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saelab.evals.probing import (
    batched_accuracy,
    fit_logistic,
    fit_logistic_batched,
    pad_rows,
)
from saelab.metrics.concepts import (
    Interval,
    absorption_fractions,
    auc,
    best_cosine,
    binary_f1,
    cone_residual,
    full_absorption,
    monosemanticity_scores,
    monosemanticity_undefined,
    top_k_latents,
)

# probe p = e1; latent 0 (main) = e1, latent 1 = (0.8, 0.6) (cos 0.8), latent 2 = e2 (cos 0)
W_DEC = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
PROBE = torch.tensor([3.0, 0.0])  # not unit: the metric normalises it
X = torch.tensor([[2.0, 0.0]] * 6)  # P = x·p = 2 for every token
CODES = torch.tensor([
    [2.0, 0.0, 0.0],   # main carries it all: M = 2 ≥ P → 0
    [0.0, 2.5, 0.0],   # main off, latent 1 projects 2.5·0.8 = 2: S/P = 1, M = 0 → 1
    [1.0, 1.25, 0.0],  # M = 1, S = 1: a = min(1, 2 − 1) = 1 → 1/(1 + 1) = 0.5
    [1.0, 0.5, 0.0],   # S = 0.4, S/P = 0.2 < 0.4 → 0
    [0.0, 0.0, 5.0],   # only an orthogonal latent: S = 0 → 0
    [1.0, 2.5, 0.0],   # M = 1, S = 2 > P − M: a = min(2, 1) = 1 → 0.5
])


def test_absorption_fraction_hand_values() -> None:
    got = absorption_fractions(X, CODES, W_DEC, PROBE, [0])
    assert got.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0, 0.0, 0.5])


def test_full_absorption_hand_values() -> None:
    got = full_absorption(X, CODES, W_DEC, PROBE, [0])
    # only row 1: main off, top latent cos 0.8 ≥ 0.025, proj/P = 1 ≥ 0.4. Row 4: main off but
    # the top latent (2) has cos 0 < 0.025.
    assert got.tolist() == [False, True, False, False, False, False]


def test_full_absorption_needs_an_aligned_top_latent() -> None:
    # main off; latent 1 has cos 0.02 < 0.025 but projects 100·0.02 = 2 = P: not absorption
    w_dec = torch.tensor([[1.0, 0.0], [0.02, math.sqrt(1 - 0.02 ** 2)]])
    codes = torch.tensor([[0.0, 100.0], [0.0, 2.0]])
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0]])  # row 2: proj/P = 0.04/4 < 0.4 either way
    assert full_absorption(x, codes, w_dec, PROBE, [0]).tolist() == [False, False]
    w_dec[1] = torch.tensor([0.03, math.sqrt(1 - 0.03 ** 2)])  # cos 0.03 ≥ 0.025
    assert full_absorption(x, codes, w_dec, PROBE, [0]).tolist() == [True, False]


def test_absorbers_need_cosine_and_top_three() -> None:
    # five aligned absorbers each projecting 0.2 (cos 0.8): only the top 3 count, S = 0.6,
    # S/P = 0.3 < 0.4 → 0; with P = 1 instead, S/P = 0.6 → M = 0 → 1
    w_dec = torch.cat([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.6]] * 5)])
    codes = torch.tensor([[0.0] + [0.25] * 5])
    assert absorption_fractions(torch.tensor([[2.0, 0.0]]), codes, w_dec, PROBE, [0]).item() == 0
    assert absorption_fractions(torch.tensor([[1.0, 0.0]]), codes, w_dec, PROBE, [0]).item() == 1
    # an absorber below cos 0.1 does not count, however much it projects (40·0.05 = P)
    w_low = torch.tensor([[1.0, 0.0], [0.05, math.sqrt(1 - 0.05 ** 2)]])
    assert absorption_fractions(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 40.0]]), w_low,
                                PROBE, [0]).item() == 0


def test_top_k_latents_rule() -> None:
    feats = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [3.0, 1.0, 1.0], [3.0, 1.0, 0.0]])
    labels = torch.tensor([False, False, True, True])
    # mean differences: +3, −4, −0.5 → by |·|: 1, 0, 2; signed: 0, 2, 1
    assert top_k_latents(feats, labels, 3) == [1, 0, 2]
    assert top_k_latents(feats, labels, 2, signed=True) == [0, 2]
    with pytest.raises(ValueError, match="both positive and negative"):
        top_k_latents(feats, torch.zeros(4, dtype=torch.bool), 1)


def test_monosemanticity_hand_values_and_nan_reasons() -> None:
    # cos(e1, e2) = 0.6, cos(e1, e3) = 0, cos(e2, e3) = 0.8; e4 = e1
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [5.0, 0.0]])
    acts = torch.tensor([
        # ã = (1, .5, .5, 0): (.5·.6 + .5·0 + .25·.8) / (.5 + .5 + .25) = .5 / 1.25 = 0.4
        [1.0, 0.5, 0.0, 0.0, 0.0, 2.0, 3.0],
        [0.5, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0],
        [0.5, 0.0, 1.0, 0.0, 0.0, 2.0, 2.0],
        [0.0, 0.0, 0.0, 0.0, 3.0, 2.0, 1.0],
    ])
    # col 1: ã = (.5, 1, 0, 0): pair (1,2) only → 0.6; col 2: ã = (0, 1, 1, 0) → 0.8;
    # col 6 = col 0 shifted and scaled (min 1): min-max normalisation gives 0.4 again
    ms = monosemanticity_scores(acts, emb)
    assert ms[[0, 1, 2, 6]].tolist() == pytest.approx([0.4, 0.6, 0.8, 0.4])
    assert torch.isnan(ms[3:6]).all()  # dead, one firing input, constant
    reasons = {u.item: u.reason for u in monosemanticity_undefined(acts)}
    assert set(reasons) == {"3", "4", "5"}
    assert reasons["3"].startswith("dead")
    assert "only one input" in reasons["4"]
    assert reasons["5"].startswith("constant")


def test_monosemanticity_matches_pairwise_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(30, 4, generator=gen))
    emb = torch.randn(30, 5, generator=gen)
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = e @ e.T
    for k in range(4):
        a = acts[:, k].double()
        a = (a - a.min()) / (a.max() - a.min())
        num = den = 0.0
        for n in range(30):
            for m in range(n + 1, 30):
                num += float(a[n] * a[m] * sim[n, m])
                den += float(a[n] * a[m])
        assert monosemanticity_scores(acts, emb)[k].item() == pytest.approx(num / den)


def test_monosemanticity_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="one embedding per input"):
        monosemanticity_scores(torch.ones(3, 2), torch.ones(4, 2))


def test_cone_residual_hand_values() -> None:
    atoms = np.array([[2.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]])
    r, top, lam = cone_residual(np.array([1.0, 1.0, 0]), atoms, 2)
    assert r == pytest.approx(0.0, abs=1e-9) and sorted(top) == [0, 1]
    assert lam == pytest.approx([1 / math.sqrt(2)] * 2)
    r, _, _ = cone_residual(np.array([1.0, 1.0, 1.0]), atoms, 2)
    assert r == pytest.approx(math.sqrt(1 / 3))  # the e3 part is outside the cone
    r, top, _ = cone_residual(np.array([-1.0, -1.0, 0]), atoms, 1)
    assert top == [2] and r == pytest.approx(math.sqrt(0.5))
    r, _, _ = cone_residual(np.array([0, 0, 1.0]), atoms, 3)
    assert r == pytest.approx(1.0)  # no atom points its way: λ = 0
    r, top, _ = cone_residual(np.zeros(3), atoms, 2)
    assert math.isnan(r) and top == []


def test_best_cosine() -> None:
    cos, j = best_cosine(torch.tensor([[1.0, 1.0], [0.0, -3.0]]),
                         torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]))
    assert cos.tolist() == pytest.approx([1.0, 0.0]) and j.tolist() == [2, 0]


def test_auc_hand_values_ties_and_undefined() -> None:
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([1.0, 1.0], [0, 1]) == pytest.approx(0.5)
    assert math.isnan(auc([0.1, 0.2], [0, 0]))  # no positives
    assert math.isnan(auc([0.1, 0.2], [1, 1]))  # no negatives


def test_binary_f1_and_interval() -> None:
    assert binary_f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    assert math.isnan(binary_f1(torch.zeros(3), torch.zeros(3)))
    iv = Interval.of([1.0, 2.0, 3.0, float("nan")])
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(Interval.of([5.0]).half_width) and math.isnan(Interval.of([]).mean)


def test_logistic_probe_matches_sklearn() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    y = (x[:, 0] + 0.5 * torch.randn(200, generator=gen)) > 0
    probe = fit_logistic(x, y)
    z = ((x - probe.mean_F.float()) / probe.std_F.float()).numpy()
    ref = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(z, y.numpy())
    # sklearn's loss is sum BCE + ‖w‖²/(2C); ours is the same divided by N
    assert probe.weight_FK[:, 0].numpy() == pytest.approx(ref.coef_[0], abs=1e-3)
    assert probe.bias_K.item() == pytest.approx(ref.intercept_[0], abs=1e-3)


def test_batched_probes_equal_separate_fits() -> None:
    gen = torch.Generator().manual_seed(2)
    feats, labels = [], []
    for n in (40, 25):
        x = torch.randn(n, 3, generator=gen)
        feats.append(x)
        labels.append((x[:, 1] + torch.randn(n, generator=gen)) > 0)
    x, y, mask = pad_rows(feats, labels)
    batched = fit_logistic_batched(x, y, mask)
    for b in range(2):
        single = fit_logistic(feats[b], labels[b])
        assert batched.weight_FK[b].numpy() == pytest.approx(single.weight_FK[:, 0].numpy(),
                                                             abs=1e-3)
    acc = batched_accuracy(batched, x, y, mask)
    for b in range(2):
        single = fit_logistic(feats[b], labels[b])
        assert acc[b].item() == pytest.approx(
            float((single.predict(feats[b])[:, 0] == labels[b]).double().mean()))


def test_monosemanticity_stays_in_range_on_outlier_units() -> None:
    # one huge activation and many tiny ones: the closed form must not blow up
    gen = torch.Generator().manual_seed(3)
    acts = torch.rand(500, 3, generator=gen) * 1e-6
    acts[7] = 1e6
    ms = monosemanticity_scores(acts, torch.rand(500, 8, generator=gen))
    assert (ms[~ms.isnan()].abs() <= 1 + 1e-6).all()


def _pairwise_ms(a: torch.Tensor, emb: torch.Tensor) -> float:
    """The definition, pair by pair, summed exactly (math.fsum)."""
    a = a.double()
    a = (a - a.min()) / (a.max() - a.min())
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = e @ e.T
    n = a.shape[0]
    iu = torch.triu_indices(n, n, 1)
    w = a[iu[0]] * a[iu[1]]
    return math.fsum((w * sim[iu[0], iu[1]]).tolist()) / math.fsum(w.tolist())


def test_monosemanticity_is_exact_on_an_ill_conditioned_unit() -> None:
    # one input at 1 and the rest ~1e-11 after min-max: the closed form subtracts two numbers
    # near 1 to get one near 1e-8; the exact pairwise sum must be used instead
    gen = torch.Generator().manual_seed(5)
    n = 1500
    emb = torch.randn(n, 16, generator=gen) + 2.0
    acts = torch.zeros(n, 1, dtype=torch.float64)
    acts[0] = 1.0
    acts[1:, 0] = torch.rand(n - 1, generator=gen, dtype=torch.float64) * 1e-11
    ms = monosemanticity_scores(acts, emb)
    assert ms[0].item() == pytest.approx(_pairwise_ms(acts[:, 0], emb), rel=1e-9, abs=1e-12)


def test_monosemanticity_refuses_embeddings_without_a_direction() -> None:
    # a zero embedding row makes the closed form's ‖Σ ã ê‖² miss that input's ã²: with
    # ã = (1, .1, .1, 0) that gave MS = (.02 − 1.02)/(1.44 − 1.02) = −2.38 before the check
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    acts = torch.tensor([[1.0], [0.1], [0.1], [0.0]])
    with pytest.raises(ValueError, match=r"inputs \[0\] are zero or not finite"):
        monosemanticity_scores(acts, emb)
    with pytest.raises(ValueError, match=r"inputs \[2\]"):
        monosemanticity_scores(acts, torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.nan, 1.0],
                                                   [1.0, 1.0]]))


def test_monosemanticity_non_finite_activation_is_nan_with_reason() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    acts = torch.tensor([[1.0, math.inf], [0.5, 1.0], [0.0, 0.0]])
    ms = monosemanticity_scores(acts, emb)
    assert ms[0].item() == pytest.approx(0.6)  # ã = (1, .5, 0): the pair (0, 1) alone
    assert math.isnan(ms[1].item())
    reasons = {u.item: u.reason for u in monosemanticity_undefined(acts)}
    assert reasons == {"1": "non-finite activation (NaN or inf) on some input"}
