import itertools
import json
import math

import pytest
import torch

from saelab.metrics import CoreMetricsAccumulator, core_metrics

# Hand-computed case: 3 tokens, 2 dims, 4 latents (one dead, one with a negative code).
ACTS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
RECON = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
CODES = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0], [0.0, 3.0, 0.5, 0.0]])


def test_hand_computed_tiny_case() -> None:
    m = core_metrics(ACTS, RECON, CODES, dense_threshold=0.5)
    assert m.n_tokens == 3
    assert m.l0 == pytest.approx(4 / 3)  # the negative code counts as active
    # errors 0, 1, 1 over 3 tokens × 2 dims
    assert m.mse == pytest.approx(2 / 6)
    # E‖x‖² = 7/3, ‖E x‖² = 13/9 → variance 8/9; EV = 1 − (2/3)/(8/9)
    assert m.explained_variance == pytest.approx(0.25)
    assert m.cosine_similarity == pytest.approx((1 + 1 + 1 / math.sqrt(2)) / 3)
    assert m.shrinkage == pytest.approx(3 / 4)  # Σ‖x̂‖² = 3, Σ x·x̂ = 4
    assert m.l2_ratio == pytest.approx((1 + 0.5 + 1 / math.sqrt(2)) / 3)
    assert m.latent_density_M.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3, 0.0])
    assert m.dead_share == pytest.approx(0.25)
    assert m.dense_share == pytest.approx(0.25)  # only latent 1 has ρ > 0.5


def test_default_dense_threshold_is_ten_percent() -> None:
    m = core_metrics(ACTS, RECON, CODES)
    assert m.dense_threshold == 0.1
    assert m.dense_share == pytest.approx(0.75)


def _random_batch(n: int = 1000, d: int = 16, m: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(n, d, generator=g) * 3 + 50.0  # large mean stresses the variance merge
    recon = acts + 0.5 * torch.randn(n, d, generator=g)
    codes = torch.relu(torch.randn(n, m, generator=g) - 1.5)
    codes[:, 0] = 0.0  # one dead latent
    return acts, recon, codes


def test_batching_does_not_change_results() -> None:
    acts, recon, codes = _random_batch()
    whole = core_metrics(acts, recon, codes).to_dict(include_density=True)
    acc = CoreMetricsAccumulator(codes.shape[1])
    bounds = [0, 7, 100, 101, 350, 500, 640, 800, 901, 999, 1000]  # 10 uneven batches
    for start, stop in itertools.pairwise(bounds):
        acc.update(acts[start:stop], recon[start:stop], codes[start:stop])
    batched = acc.compute().to_dict(include_density=True)
    assert batched.keys() == whole.keys()
    for key, value in whole.items():
        assert batched[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_explained_variance_is_measured_against_the_mean_not_zero() -> None:
    acts, _, codes = _random_batch()
    recon_mean = acts.mean(dim=0, keepdim=True).expand_as(acts)
    m = core_metrics(acts, recon_mean, codes)
    # Predicting the mean explains nothing; measured against zero it would look like ~0.997.
    assert m.explained_variance == pytest.approx(0.0, abs=1e-6)


def test_perfect_reconstruction() -> None:
    acts, _, codes = _random_batch()
    m = core_metrics(acts, acts.clone(), codes)
    assert m.mse == 0.0
    assert m.explained_variance == 1.0
    assert m.cosine_similarity == pytest.approx(1.0)
    assert m.shrinkage == pytest.approx(1.0)
    assert m.l2_ratio == pytest.approx(1.0)


def test_mask_selects_tokens() -> None:
    acts, recon, codes = _random_batch()
    mask = torch.arange(acts.shape[0]) % 3 == 0
    masked = core_metrics(acts, recon, codes, mask_N=mask)
    subset = core_metrics(acts[mask], recon[mask], codes[mask])
    assert masked.n_tokens == int(mask.sum())
    assert masked.to_dict() == pytest.approx(subset.to_dict())


def test_masked_out_nan_tokens_are_ignored() -> None:
    acts = ACTS.clone()
    acts[1, 0] = float("nan")
    mask = torch.tensor([True, False, True])
    assert core_metrics(acts, RECON, CODES, mask_N=mask).n_tokens == 2


def test_zero_token_is_excluded_from_cosine_and_ratio() -> None:
    acts = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    recon = torch.tensor([[0.3, 0.0], [0.0, 0.0]])
    m = core_metrics(acts, recon, torch.zeros(2, 3))
    assert m.cosine_similarity == 0.0  # only token 1 counts, and x̂ = 0 there
    assert m.l2_ratio == 0.0
    assert m.l0 == 0.0
    assert m.dead_share == 1.0


def test_to_dict_is_json_ready() -> None:
    d = core_metrics(ACTS, RECON, CODES).to_dict(include_density=True)
    parsed = json.loads(json.dumps(d))
    assert parsed["latent_density"] == pytest.approx([1 / 3, 2 / 3, 1 / 3, 0.0])
    assert "latent_density" not in core_metrics(ACTS, RECON, CODES).to_dict()


@pytest.mark.parametrize("name", ["acts", "recon", "codes"])
def test_nan_input_raises(name: str) -> None:
    tensors = {"acts": ACTS.clone(), "recon": RECON.clone(), "codes": CODES.clone()}
    tensors[name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        core_metrics(tensors["acts"], tensors["recon"], tensors["codes"])


def test_bad_shapes_and_mask_raise() -> None:
    acc = CoreMetricsAccumulator(4)
    with pytest.raises(ValueError, match="acts and recon"):
        acc.update(ACTS, RECON[:2], CODES)
    with pytest.raises(ValueError, match="codes must have shape"):
        acc.update(ACTS, RECON, CODES[:, :3])
    with pytest.raises(ValueError, match="mask must be a bool"):
        acc.update(ACTS, RECON, CODES, mask_N=torch.ones(3))
    with pytest.raises(ValueError, match="no tokens accumulated"):
        acc.compute()
    acc.update(ACTS, RECON, CODES)
    with pytest.raises(ValueError, match="d_model changed"):
        acc.update(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="n_latents"):
        CoreMetricsAccumulator(0)
    with pytest.raises(ValueError, match="dense_threshold"):
        CoreMetricsAccumulator(4, dense_threshold=2.0)


def test_constant_data_has_undefined_explained_variance() -> None:
    acts = torch.ones(4, 2)
    m = core_metrics(acts, acts * 0.5, torch.ones(4, 1))
    assert math.isnan(m.explained_variance)
    assert m.mse == pytest.approx(0.25)
