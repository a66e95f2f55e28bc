"""The harder toy: parent/child hierarchies, a data mean, orthogonalised superposition."""

import dataclasses
import math

import pytest
import torch

from saelab.toy import ToyConfig, ToyModel


def _sample(cfg: ToyConfig, n: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    return ToyModel(cfg).sample(n, torch.Generator().manual_seed(0))


def test_hierarchy_firing_structure():
    cfg = ToyConfig.hierarchical()
    model = ToyModel(cfg)
    _, codes = _sample(cfg)
    fires = codes > 0
    assert cfg.hierarchy is not None
    for parent, *children in cfg.hierarchy:
        child_fires = fires[:, children]
        # a child never fires without its parent, and never together with a sibling
        assert not bool((child_fires.any(1) & ~fires[:, parent]).any())
        assert int((child_fires.sum(1) > 1).sum()) == 0
        # given the parent fires, some child fires with probability Σp_child / p_parent = 0.8
        conditional = float(child_fires[fires[:, parent]].any(1).double().mean())
        assert conditional == pytest.approx(0.24 / 0.3, abs=0.02)
    # marginal rates are the configured ones (children included); binomial std < 0.0015
    assert torch.allclose(fires.double().mean(0), model.firing_probs_G, atol=0.007)
    assert float(fires.sum(1).double().mean()) == pytest.approx(model.true_l0, abs=0.05)
    assert model.true_l0 == pytest.approx(5.2)


def test_data_mean_is_the_bias():
    cfg = ToyConfig.hierarchical()
    model = ToyModel(cfg)
    acts, codes = _sample(cfg, 20_000)
    assert float(model.bias_D.norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(acts, codes @ model.features_GD + model.bias_D, atol=1e-5)
    plain = ToyModel(dataclasses.replace(cfg, bias_norm=0.0))
    assert torch.equal(plain.bias_D, torch.zeros(32))


def test_orthogonalised_superposition_spreads_features():
    cfg = ToyConfig.hierarchical()
    spread = ToyModel(cfg).features_GD
    random = ToyModel(dataclasses.replace(cfg, orthogonalise=False)).features_GD
    assert torch.allclose(spread.norm(dim=1), torch.ones(40), atol=1e-5)

    def max_overlap(f: torch.Tensor) -> float:
        return float((f @ f.T - torch.eye(f.shape[0])).abs().max())

    welch = math.sqrt((40 - 32) / (32 * 39))  # no 40 unit vectors in R^32 can do better
    assert max_overlap(random) > 0.3
    assert welch <= max_overlap(spread) < 1.5 * welch


def test_hierarchy_validation_names_the_problem():
    base = {"n_features": 4, "d_model": 8, "firing": "explicit", "correlation": "none"}
    with pytest.raises(ValueError, match=r"sum to 0\.6, more than parent 0"):
        ToyConfig(**base, firing_probs=[0.5, 0.3, 0.3, 0.1], hierarchy=[[0, 1, 2]])
    with pytest.raises(ValueError, match="child in two hierarchy groups"):
        ToyConfig(**base, firing_probs=[0.5, 0.5, 0.1, 0.1], hierarchy=[[0, 2], [1, 2]])
    with pytest.raises(ValueError, match="cycle"):
        ToyConfig(**base, firing_probs=[0.3, 0.3, 0.1, 0.1], hierarchy=[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        ToyConfig(**base, firing_probs=[0.5, 0.3, 0.3, 0.1], hierarchy=[[0, 7]])


def test_nested_hierarchy_grandchildren_follow_their_parent():
    cfg = ToyConfig(n_features=4, d_model=8, firing="explicit", correlation="none",
                    firing_probs=[0.6, 0.3, 0.2, 0.1], hierarchy=[[1, 2], [0, 1]])
    _, codes = _sample(cfg, 50_000)
    fires = codes > 0
    assert not bool((fires[:, 2] & ~fires[:, 1]).any())
    assert not bool((fires[:, 1] & ~fires[:, 0]).any())
    assert float(fires[:, 2].double().mean()) == pytest.approx(0.2, abs=0.01)
