"""SARM: Bradley–Terry loss and NMSE against hand values, exact per-latent attribution on a
constructed pair, reward steering, training modes on a tiny local GPT-2, save/load, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from saelab.cli import main
from saelab.config import ConfigError
from saelab.io import save
from saelab.models.hf import load_hf_model
from saelab.models.tiny import TinyTokenModel, build_tiny_gpt2
from saelab.sarm import SARM, SARMConfig, SARMTrainConfig, bradley_terry_loss, nmse, train_sarm
from saelab.sarm.data import Pair, tokenize_pairs
from saelab.sarm.explain import explain_acts, explain_tokens
from saelab.sarm.model import load_sarm, save_sarm
from saelab.sarm.train import pair_rewards, pairwise_accuracy
from saelab.steer import LatentEdit
from tests.helpers import small_sae


def test_bradley_terry_loss_and_nmse_hand_values() -> None:
    r_c = torch.tensor([1.0, 0.0, -2.0])
    r_r = torch.tensor([0.0, 0.0, 1.0])
    # −log σ(1) = 0.3132617, −log σ(0) = log 2, −log σ(−3) = 3.0485874
    expected = (0.31326169 + math.log(2) + 3.04858735) / 3
    assert float(bradley_terry_loss(r_c, r_r)) == pytest.approx(expected, abs=1e-6)
    assert float(bradley_terry_loss(torch.tensor([100.0]), torch.tensor([-100.0]))) \
        == pytest.approx(0.0, abs=1e-6)
    assert float(bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([100.0]))) \
        == pytest.approx(200.0)  # stable for large margins
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    x_hat = torch.tensor([[3.0, 3.0], [0.0, 0.0]])
    assert float(nmse(x, x_hat)) == pytest.approx((1 / 25 + 1 / 1) / 2)
    assert pairwise_accuracy(r_c, r_r) == pytest.approx((1 + 0.5 + 0) / 3)


def _orthonormal_sae(d: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    """A ReLU SAE (d latents) whose encoder columns are an orthonormal basis."""
    sae = small_sae("relu", d_in=d, d_sae=d, seed=seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_enc.copy_(q)
        sae.W_dec.copy_(q.T)
    return sae, q


def test_attribution_puts_the_difference_on_the_one_latent_that_differs() -> None:
    sae, q = _orthonormal_sae()
    # backbone: the activation at hook "embed" is the token's embedding row; tokens 1 and 2
    # differ exactly along encoder column 5, so their pre-activations differ only in latent 5
    model = TinyTokenModel(vocab_size=4, d_model=8, n_blocks=1)
    with torch.no_grad():
        model.embed.weight[2] = model.embed.weight[1] + 1.7 * q[:, 5]
    sarm = SARM(model, SARMConfig(hook="embed"), sae)
    with torch.no_grad():
        sarm.head.weight.normal_(generator=torch.Generator().manual_seed(3))
    chosen = torch.tensor([[0, 3, 2]])
    rejected = torch.tensor([[0, 3, 1]])
    mask = torch.ones_like(chosen)
    exp = explain_tokens(sarm, chosen, mask, rejected, mask, top=8)
    gap = exp.reward_chosen - exp.reward_rejected
    assert abs(gap) > 0.1
    assert exp.top[0].latent == 5
    assert exp.top[0].contribution == pytest.approx(gap, rel=1e-5)
    assert exp.top[0].contribution == pytest.approx(1.7 * float(sarm.head.weight[0, 5].detach()),
                                                   rel=1e-5)
    assert all(abs(c.contribution) < 1e-5 for c in exp.top[1:])
    assert exp.share_of_top == pytest.approx(1.0, abs=1e-5)
    # the rewards agree with the model's forward pass
    with torch.no_grad():
        assert float(sarm(chosen, mask)[0]) == pytest.approx(exp.reward_chosen, rel=1e-5)


def test_reward_steering_edits_a_latent_before_the_head() -> None:
    sae, _ = _orthonormal_sae()
    sarm = SARM(TinyTokenModel(vocab_size=4, d_model=8, n_blocks=1), SARMConfig(hook="embed"), sae)
    with torch.no_grad():
        sarm.head.weight.normal_(generator=torch.Generator().manual_seed(4))
        h = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
        base = sarm.reward_from_acts(h)
        pushed = sarm.reward_from_acts(h, [LatentEdit(2, "add", 3.0)])
        torch.testing.assert_close(pushed - base, torch.full((3,), 3.0 * float(sarm.head.weight[0, 2])))
        zeroed = sarm.reward_from_acts(h, [LatentEdit(2, "zero")])
        z = sarm.latents(h)
        torch.testing.assert_close(base - zeroed, sarm.head.weight[0, 2] * z[:, 2])
        contributions = sarm.attribution_from_acts(h)
        torch.testing.assert_close(contributions.sum(-1), base)
    with pytest.raises(ConfigError, match="8 latents"):
        sarm.reward_from_acts(h, [LatentEdit(8, "zero")])


def test_codes_features_use_the_sparse_codes() -> None:
    sae = small_sae("topk", d_in=8, d_sae=24)
    sarm = SARM(TinyTokenModel(vocab_size=4, d_model=8), SARMConfig(hook="embed", features="codes"),
                sae)
    h = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sarm.latents(h), sae.encode(h))
        assert int((sarm.latents(h) != 0).sum(-1).max()) <= 4
    explanation = explain_acts(sarm, h[0], h[1])
    assert math.isnan(explanation.share_of_top)  # zero head: no difference to share


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2", n_layer=2, d_model=32)
    return folder, load_hf_model(folder)


def _pairs(n: int, seed: int) -> list[Pair]:
    """Chosen texts end in a 'good' word, rejected in a 'bad' one (a last-token task)."""
    rng = torch.Generator().manual_seed(seed)
    starts = ["the town is", "a school went to", "they looked at the", "I wrote that"]
    good, bad = ["warm", "green", "new"], ["old", "broken", "small"]
    out = []
    for _ in range(n):
        s = starts[int(torch.randint(0, 4, (1,), generator=rng))]
        g, b = (int(torch.randint(0, 3, (1,), generator=rng)) for _ in range(2))
        out.append(Pair(f"{s} {good[g]}", f"{s} {bad[b]}"))
    return out


@pytest.mark.parametrize("mode", ["head", "head_sae", "all"])
def test_training_modes_learn_and_change_only_their_parts(gpt2, mode: str) -> None:  # type: ignore[no-untyped-def]
    _, loaded = gpt2
    model = load_hf_model(gpt2[0]).model  # a private copy: mode "all" changes its weights
    sae = small_sae("topk", d_in=32, d_sae=64)
    sarm = SARM(model, SARMConfig(hook="transformer.h.1"), sae)
    train = tokenize_pairs(loaded.tokenizer, _pairs(48, 0))
    held = tokenize_pairs(loaded.tokenizer, _pairs(32, 1))
    sae_before = sae.W_enc.detach().clone()
    backbone_before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    history = train_sarm(sarm, train, SARMTrainConfig(mode=mode, epochs=15, batch_size=16,
                                                      lr=3e-2, log_every=0))
    assert history.bt_loss[-1] < history.bt_loss[0]
    assert pairwise_accuracy(*pair_rewards(sarm, held)) >= 0.9
    assert torch.equal(sae.W_enc, sae_before) == (mode == "head")
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, backbone_before) == (mode != "all")
    assert bool(history.recon_nmse) == (mode != "head")


def test_raw_baseline_and_save_load_roundtrip(gpt2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, loaded = gpt2
    sarm = SARM(loaded.model, SARMConfig(hook="transformer.h.1", features="raw"), d_in=32)
    train = tokenize_pairs(loaded.tokenizer, _pairs(48, 0))
    train_sarm(sarm, train, SARMTrainConfig(epochs=10, batch_size=16, lr=3e-2, log_every=0))
    assert float(sarm.act_std.min()) > 0 and not torch.equal(sarm.act_std, torch.ones(32))
    with pytest.raises(ConfigError, match="has none"):
        train_sarm(sarm, train, SARMTrainConfig(mode="head_sae", log_every=0))
    before = pair_rewards(sarm, train)
    save_sarm(sarm, tmp_path / "raw")
    again = load_sarm(tmp_path / "raw", backbone=loaded.model)
    after = pair_rewards(again, train)
    torch.testing.assert_close(before, after)


def test_cli_train_score_explain(gpt2, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    folder, _ = gpt2
    sae_dir = save(small_sae("topk", d_in=32, d_sae=64), tmp_path / "sae")
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"chosen": p.chosen, "rejected": p.rejected})
                              for p in _pairs(40, 0)) + "\n")
    out = tmp_path / "sarm"
    args = ["sarm", "train", "--model", str(folder), "--hook", "transformer.h.1", "--sae",
            str(sae_dir), "--data", str(data), "--out", str(out), "--mode", "head_sae",
            "--epochs", "10", "--batch-size", "16", "--lr", "0.03", "--log-every", "0"]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[0])
    assert metrics["train_accuracy"] >= 0.9 and (out / "sae" / "sae.safetensors").exists()
    assert main(args) == 2  # never overwrites a finished run silently
    assert "not empty" in capsys.readouterr().err
    assert main(["sarm", "score", str(out), "--data", str(data), "--out",
                 str(tmp_path / "scores.jsonl")]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["pairwise_accuracy"] == pytest.approx(metrics["train_accuracy"])
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 40
    assert main(["sarm", "explain", str(out), "--data", str(data), "--index", "2", "--top", "3",
                 "--edit", "5:add:1", "--json", str(tmp_path / "exp.json")]) == 0
    text = capsys.readouterr().out
    assert "w_j·Δz_j" in text and "before the head" in text
    assert len(json.loads((tmp_path / "exp.json").read_text())["top"]) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "x"}\n')
    assert main(["sarm", "score", str(out), "--data", str(bad)]) == 2
    assert "bad.jsonl:1 needs string fields" in capsys.readouterr().err
