"""Model evaluation checked against CE, KL and core metrics computed by hand on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.config import ConfigError
from saelab.evals.model import ModelEvalConfig, ModelEvalResult, evaluate_on_model
from saelab.models.hooks import HookError
from saelab.registry import build, config_from_dict

V, D, M = 11, 6, 12
BOS, EOS = 1, 2


class LeakyBigram(nn.Module):
    """logits_t = (h_t + ½·h_{t−1}) U + c with h = mid(embed(tokens)): the hooked value at t−1
    reaches position t, so an un-spliced BOS visibly changes the next position's logits."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(V, D)
        self.mid = nn.Identity()
        self.U = nn.Parameter(torch.randn(D, V, generator=g))
        self.c = nn.Parameter(torch.randn(V, generator=g) * 0.3)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(V, D, generator=g))

    def forward(self, tokens_BS: Tensor) -> Tensor:
        h = self.mid(self.embed(tokens_BS))
        return self.logits(h)

    def logits(self, h_BSD: Tensor) -> Tensor:
        shifted = torch.cat([torch.zeros_like(h_BSD[:, :1]), h_BSD[:, :-1]], dim=1)
        return (h_BSD + 0.5 * shifted) @ self.U + self.c


def relu_sae(seed: int = 0) -> SAE:
    sae = build(config_from_dict({"architecture": "relu", "d_in": D, "d_sae": M}).resolved())
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.fill_(-0.2)  # some codes are zero, so L0 < M
    return sae


def identity_sae() -> SAE:
    """relu(x) − relu(−x) = x exactly: W_enc = [I, −I], W_dec = [I; −I]."""
    sae = build(config_from_dict({"architecture": "relu", "d_in": D, "d_sae": 2 * D}).resolved())
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


TOKENS = [torch.tensor([[BOS, 4, 5, 6, EOS, 7], [BOS, 8, 3, 3, 9, 10]]),
          torch.tensor([[BOS, 5, 5, EOS, 4, 6]])]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def by_hand(model: LeakyBigram, sae: SAE) -> dict[str, float]:
    """The reference numbers, computed step by step in float64 numpy."""
    ce: dict[str, list[float]] = {"clean": [], "sae": [], "zero": []}
    kl: dict[str, list[float]] = {"sae": [], "zero": []}
    x_rows, recon_rows, codes_rows = [], [], []
    with torch.no_grad():
        for tokens in TOKENS:
            h = model.embed(tokens)
            keep = ~torch.isin(tokens, torch.tensor([BOS, EOS]))
            codes = sae.encode(h[keep])
            recon = sae.decode(codes)
            x_rows.append(h[keep].double().numpy())
            recon_rows.append(recon.double().numpy())
            codes_rows.append(codes.double().numpy())
            spliced, zeroed = h.clone(), h.clone()
            spliced[keep], zeroed[keep] = recon, 0  # BOS/EOS positions keep their activation
            logp = {name: log_softmax(model.logits(v).double().numpy())
                    for name, v in (("clean", h), ("sae", spliced), ("zero", zeroed))}
            for b, s in zip(*np.nonzero(keep[:, :-1].numpy()), strict=True):
                target = int(tokens[b, s + 1])
                for name in ce:
                    ce[name].append(-logp[name][b, s, target])
                p = np.exp(logp["clean"][b, s])
                for name in kl:
                    kl[name].append(float((p * (logp["clean"][b, s] - logp[name][b, s])).sum()))
    x, xhat, f = (np.concatenate(r) for r in (x_rows, recon_rows, codes_rows))
    means = {f"ce_{k}": float(np.mean(v)) for k, v in ce.items()}
    means.update({f"kl_{k}": float(np.mean(v)) for k, v in kl.items()})
    means["n"] = len(ce["clean"])
    means["l0"] = float((f != 0).sum(1).mean())
    means["ev"] = 1 - ((x - xhat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    means["mse"] = float(((x - xhat) ** 2).mean())
    means["n_tokens"] = x.shape[0]
    return means


def evaluate(model: nn.Module, sae: SAE, **cfg: Any) -> tuple[Any, Any, Any]:
    return evaluate_on_model(model, sae, "mid", TOKENS, [BOS, EOS], ModelEvalConfig(**cfg))


def test_ce_kl_and_core_metrics_match_hand_computation() -> None:
    model, sae = LeakyBigram(), relu_sae()
    core, down, _ = evaluate(model, sae)
    ref = by_hand(model, sae)
    assert down is not None and down.n_predictions == ref["n"] == 10
    for name in ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero"):
        assert getattr(down, name) == pytest.approx(ref[name], rel=1e-5), name
    assert down.ce_loss_recovered == pytest.approx(
        (ref["ce_zero"] - ref["ce_sae"]) / (ref["ce_zero"] - ref["ce_clean"]), rel=1e-5)
    assert down.kl_score == pytest.approx((ref["kl_zero"] - ref["kl_sae"]) / ref["kl_zero"],
                                          rel=1e-5)
    assert core.n_tokens == ref["n_tokens"] == 13  # BOS and EOS positions are not counted
    assert core.l0 == pytest.approx(ref["l0"])
    assert 0 < core.l0 < M
    assert core.explained_variance == pytest.approx(ref["ev"], rel=1e-6)
    assert core.mse == pytest.approx(ref["mse"], rel=1e-6)


def test_perfect_reconstruction_recovers_everything() -> None:
    core, down, _ = evaluate(LeakyBigram(), identity_sae())
    assert down is not None
    assert down.ce_sae == pytest.approx(down.ce_clean, abs=1e-6)
    assert down.ce_loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert down.kl_sae == pytest.approx(0.0, abs=1e-9)
    assert down.kl_score == pytest.approx(1.0, abs=1e-6)
    assert down.kl_zero > 0 and down.ce_zero != down.ce_clean
    assert core.explained_variance == pytest.approx(1.0, abs=1e-6)


def test_max_tokens_limits_the_batches() -> None:
    core, down, _ = evaluate(LeakyBigram(), relu_sae(), max_tokens=12)
    assert core.n_tokens == 9 and down is not None and down.n_predictions == 7  # first batch only


def test_width_mismatch_names_both_widths() -> None:
    sae = build(config_from_dict({"architecture": "relu", "d_in": D + 2, "d_sae": M}).resolved())
    with pytest.raises(HookError, match=rf"width {D} but the SAE expects d_in={D + 2}"):
        evaluate(LeakyBigram(), sae)


def test_ce_kl_needs_logits() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(V, D)

        def forward(self, tokens: Tensor) -> dict[str, Tensor]:
            return {"last_hidden_state": self.embed(tokens)}

    with pytest.raises(ConfigError, match="needs a model that outputs next-token logits"):
        evaluate_on_model(Encoder(), relu_sae(), "embed", TOKENS, [BOS], ModelEvalConfig(
            downstream="ce_kl"))
    _core, down, emb = evaluate_on_model(Encoder(), identity_sae(), "embed", TOKENS, [BOS],
                                        ModelEvalConfig())
    assert down is None and emb is not None and emb.n_contexts == 3
    assert emb.cosine_sae == pytest.approx(1.0)
    assert emb.cosine_zero < 0.999


def test_result_json_holds_every_metric(tmp_path: Path) -> None:
    core, down, emb = evaluate(LeakyBigram(), relu_sae())
    result = ModelEvalResult("sae/path", "leaky", "mid", {"note": 1}, core, down, emb)
    result.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["downstream"]["ce_loss_recovered"] == pytest.approx(down.ce_loss_recovered)
    assert len(data["metrics"]["latent_density"]) == M
    assert data["embedding"] is None and data["hook"] == "mid"
    assert all(math.isfinite(v) for _, v in result.scalars())
    assert result.density_plot(tmp_path / "d.png").stat().st_size > 1000
