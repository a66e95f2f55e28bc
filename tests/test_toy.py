import dataclasses
import itertools

import pytest
import torch

from saelab.toy import ToyConfig, ToyModel, zipf_probabilities

N_SAMPLES = 50_000


def _sample(cfg: ToyConfig, n: int = N_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return ToyModel(cfg).sample(n, torch.Generator().manual_seed(seed))


def test_features_orthonormal_when_g_le_d() -> None:
    features = ToyModel(ToyConfig(n_features=50, d_model=100)).features_GD
    assert features.shape == (50, 100) and features.dtype == torch.float32
    assert torch.allclose(features @ features.T, torch.eye(50), atol=1e-5)


def test_superposition_features_are_unit_but_not_orthogonal() -> None:
    features = ToyModel(ToyConfig.osae()).features_GD
    assert features.shape == (100, 80)
    assert torch.allclose(features.norm(dim=1), torch.ones(100), atol=1e-5)
    off_diagonal = (features @ features.T - torch.eye(100)).abs()
    assert float(off_diagonal.max()) > 0.1


def test_empirical_firing_rates_and_l0_match_config() -> None:
    model = ToyModel(ToyConfig.chanin_large())
    acts, codes = model.sample(N_SAMPLES, torch.Generator().manual_seed(0))
    assert acts.shape == (N_SAMPLES, 100) and codes.shape == (N_SAMPLES, 50)
    rates = (codes != 0).double().mean(dim=0)
    # binomial std ≤ sqrt(0.25/50k) ≈ 0.0022; 0.01 is > 4 std
    assert torch.allclose(rates, model.firing_probs_G, atol=0.01)
    assert model.true_l0 == pytest.approx(2.5 + 0.345 * 1225 / 50)  # 10.9525
    assert float((codes != 0).sum(dim=1).double().mean()) == pytest.approx(model.true_l0, abs=0.1)
    assert torch.allclose(acts, codes @ model.features_GD, atol=1e-5)


def test_linear_schedule_endpoints() -> None:
    probs = ToyModel(ToyConfig(p_max=0.3, p_min=0.1, n_features=5)).firing_probs_G
    assert probs.tolist() == pytest.approx([0.3, 0.25, 0.2, 0.15, 0.1])


def test_osae_zipf_prior() -> None:
    model = ToyModel(ToyConfig.osae())
    probs = model.firing_probs_G
    assert model.true_l0 == pytest.approx(5.0)
    # Σ i^-1.2 over 100 features is ≈ 3.7 < 5, so feature 0 saturates at p = 1 and the rest
    # keep their Zipf ratios.
    assert float(probs[0]) == 1.0
    assert float(probs[1] / probs[2]) == pytest.approx(1.5**1.2)
    assert bool((probs[:-1] >= probs[1:]).all())
    _, codes = model.sample(N_SAMPLES, torch.Generator().manual_seed(1))
    assert float((codes != 0).sum(dim=1).double().mean()) == pytest.approx(5.0, abs=0.1)


def test_zipf_clipping_keeps_target_l0() -> None:
    probs = zipf_probabilities(10, alpha=2.0, target_l0=5.0)
    assert float(probs.sum()) == pytest.approx(5.0)
    assert float(probs.max()) == 1.0
    assert bool((probs <= 1.0).all())
    assert zipf_probabilities(4, alpha=1.0, target_l0=4.0).tolist() == [1.0] * 4


def _co_firing(cfg: ToyConfig) -> float:
    _, codes = _sample(cfg)
    fires = codes != 0
    return float((fires[:, 0] & fires[:, 1]).double().mean())


def test_correlation_changes_co_firing() -> None:
    independent = ToyConfig.chanin_small()
    independent = dataclasses.replace(independent, correlation="none", correlation_matrix=None)
    p_joint_independent = _co_firing(independent)
    assert p_joint_independent == pytest.approx(0.4 * 0.4, abs=0.01)
    assert _co_firing(ToyConfig.chanin_small(+0.4)) > p_joint_independent + 0.03
    assert _co_firing(ToyConfig.chanin_small(-0.4)) < p_joint_independent - 0.03


def test_correlation_keeps_marginals() -> None:
    model = ToyModel(ToyConfig.chanin_small(-0.4))
    _, codes = model.sample(N_SAMPLES, torch.Generator().manual_seed(3))
    rates = (codes != 0).double().mean(dim=0)
    assert torch.allclose(rates, torch.full((5,), 0.4, dtype=torch.float64), atol=0.01)


def test_random_correlation_strength_controls_co_firing() -> None:
    def co_firing_spread(strength: float) -> float:
        cfg = ToyConfig(n_features=20, d_model=20, correlation_strength=strength)
        _, codes = _sample(cfg, n=20_000)
        fire_corr = torch.corrcoef((codes != 0).double().T)
        return float((fire_corr - torch.eye(20)).abs().mean())

    assert ToyModel(ToyConfig(correlation_strength=0.0)).correlation_GG.equal(
        torch.eye(50, dtype=torch.float64)
    )
    assert co_firing_spread(0.0) < 0.02
    assert co_firing_spread(0.9) > 2 * co_firing_spread(0.3) > 0.02


def test_batches_are_deterministic_and_resumable() -> None:
    model = ToyModel(ToyConfig.osae())
    full = list(itertools.islice(model.batches(256, seed=7), 5))
    resumed = list(itertools.islice(ToyModel(ToyConfig.osae()).batches(256, 7, start_batch=2), 3))
    for a, b in zip(full[2:], resumed, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(full[0], full[1])
    other_seed = next(model.batches(256, seed=8))
    assert not torch.equal(full[0], other_seed)
    acts, codes = model.batch_at(3, 256, seed=7)
    assert torch.equal(acts, full[3]) and codes.shape == (256, 100)


def test_structure_seed_is_separate_from_sampling() -> None:
    a = ToyModel(ToyConfig(seed=1)).features_GD
    b = ToyModel(ToyConfig(seed=1, correlation="none")).features_GD
    assert torch.equal(a, b)
    assert not torch.equal(a, ToyModel(ToyConfig(seed=2)).features_GD)


def test_magnitudes_per_feature_and_relu_zeros() -> None:
    cfg = ToyConfig(
        n_features=3,
        d_model=4,
        firing="explicit",
        firing_probs=[1.0, 1.0, 0.0],
        correlation="none",
        magnitude_scale=[2.0, 1.0, 1.0],
        magnitude_mean=[1.5, 0.0, 1.0],
        magnitude_std=[0.0, 1.0, 0.0],
    )
    model = ToyModel(cfg)
    _, codes = model.sample(20_000, torch.Generator().manual_seed(0))
    assert bool((codes[:, 0] == 3.0).all())  # a·ReLU(μ) with σ = 0
    assert float((codes[:, 1] == 0).double().mean()) == pytest.approx(0.5, abs=0.02)
    assert bool((codes[:, 1] >= 0).all())
    assert bool((codes[:, 2] == 0).all())  # p = 0 never fires
    assert model.true_l0 == pytest.approx(2.0)
    assert model.expected_nonzero_l0 == pytest.approx(1.5)


def test_sample_shapes_and_empty() -> None:
    acts, codes = ToyModel(ToyConfig()).sample(0)
    assert acts.shape == (0, 100) and codes.shape == (0, 50)


NOT_PSD = [[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_features": 0}, "n_features must be >= 1"),
        ({"firing": "cubic"}, "firing must be one of"),
        ({"firing_probs": [0.1] * 50}, "set firing='explicit'"),
        ({"firing": "explicit"}, "needs firing_probs"),
        ({"firing": "explicit", "firing_probs": [0.1, 0.2]}, "n_features=50"),
        ({"firing": "explicit", "firing_probs": [1.5] * 50}, r"in \[0, 1\]"),
        ({"p_max": 1.2}, r"p_max must be in \[0, 1\]"),
        ({"firing": "zipf", "target_l0": 60.0}, "target_l0"),
        ({"correlation_strength": 1.5}, "correlation_strength"),
        ({"correlation": "explicit"}, "needs correlation_matrix"),
        ({"correlation_matrix": [[1.0]]}, "set correlation='explicit'"),
        ({"magnitude_std": -0.1}, "magnitude_std must be >= 0"),
        ({"magnitude_mean": [1.0, 2.0]}, "magnitude_mean must be a scalar or a list"),
    ],
)
def test_bad_config_raises(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToyConfig(**overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (NOT_PSD, "not positive semi-definite"),
        ([[1.0, 0.5, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]], "symmetric"),
        ([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "unit diagonal"),
        ([[1.0, 0.0], [0.0, 1.0]], r"shape \(3, 3\)"),
    ],
)
def test_bad_correlation_matrix_raises(matrix: list[list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToyConfig(n_features=3, d_model=3, correlation="explicit", correlation_matrix=matrix)


def test_singular_but_valid_correlation_is_accepted() -> None:
    # Features 0 and 1 perfectly correlated: singular C, still a valid correlation matrix.
    matrix = [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    cfg = ToyConfig(
        n_features=3,
        d_model=3,
        firing="explicit",
        firing_probs=[0.3, 0.3, 0.3],
        correlation="explicit",
        correlation_matrix=matrix,
    )
    _, codes = _sample(cfg, n=5000)
    fires = codes != 0
    assert torch.equal(fires[:, 0], fires[:, 1])


def test_help_metadata_on_every_field() -> None:
    for field in dataclasses.fields(ToyConfig):
        assert field.metadata.get("help"), field.name


def test_orderedness_uses_the_live_only_matching_of_stability() -> None:
    from saelab.registry import build, config_from_dict
    from saelab.toy.recovery import score_sae

    toy = ToyModel(ToyConfig.chanin_small())
    feats = toy.features_GD.float()
    g, d = feats.shape
    sae = build(config_from_dict({"architecture": "topk", "d_in": d, "d_sae": 2 * g,
                                  "k": 2}).resolved())
    noise = 0.3 * torch.randn(g, d, generator=torch.Generator().manual_seed(0))
    live = torch.nn.functional.normalize(feats + noise, dim=1)  # in order, cos ≈ 0.95
    dead = feats.flip(0)  # exact copies in reverse order, but they never fire
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([live, dead]))
        sae.W_enc.copy_(torch.cat([live, dead]).T)
        sae.b_enc.copy_(torch.cat([torch.zeros(g), torch.full((g,), -1e4)]))
        sae.b_dec.zero_()
    score = score_sae("t", sae, toy, n_eval=2000)
    assert score.dead_share == 0.5
    assert score.orderedness == 1.0  # the live latents are in the features' order
