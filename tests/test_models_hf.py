"""Hugging Face models through the same loader as hub ids: a tiny GPT-2 saved to a folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from saelab.evals.model import ModelEvalConfig
from saelab.evals.model import run as eval_model
from saelab.io import save
from saelab.models import (
    HookError,
    HookPoint,
    ModelLoadError,
    capture,
    load_hf_model,
    resolve_module,
)
from saelab.models.tiny import build_tiny_gpt2
from saelab.registry import build, config_from_dict
from saelab.text import TextConfig, corpus_path, token_batches


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"), n_layer=3)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_local_folder_loads_like_a_hub_id(gpt2_dir: Path) -> None:
    lm = load_hf_model(gpt2_dir)
    assert lm.is_causal_lm and not lm.model.training
    assert lm.tokenizer.bos_token_id == 2 and lm.tokenizer("the cat")["input_ids"]
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_hf_model(gpt2_dir.parent / "missing")


def test_gpt2_hooks_chain_and_stop_early(gpt2_dir: Path) -> None:
    lm = load_hf_model(gpt2_dir)
    tokens = torch.randint(4, 100, (2, 10))
    ran: list[str] = []
    resolve_module(lm.model, "transformer.h.2").register_forward_hook(lambda *_: ran.append("h.2"))
    resolve_module(lm.model, "lm_head").register_forward_hook(lambda *_: ran.append("lm_head"))
    with torch.no_grad():
        got = capture(lm.model, ["transformer.h.0", "transformer.h.1:input"],
                      lambda: lm.model(input_ids=tokens))
    assert ran == []  # nothing after transformer.h.1's input ran
    assert torch.equal(got[HookPoint("transformer.h.0")], got[HookPoint("transformer.h.1", "input")])
    assert got[HookPoint("transformer.h.0")].shape == (2, 10, 32)
    with pytest.raises(HookError, match=r"no module 'transformer\.h\.7'; closest existing paths: "
                                        r"transformer\.h\.\d"):
        capture(lm.model, ["transformer.h.7"], lambda: lm.model(input_ids=tokens))


def test_eval_on_gpt2_gives_consistent_numbers(gpt2_dir: Path, tmp_path: Path) -> None:
    sae = build(config_from_dict({"architecture": "topk", "d_in": 32, "d_sae": 64, "k": 8})
                .resolved())
    save(sae, tmp_path / "sae")
    result = eval_model(sae, str(tmp_path / "sae"), str(gpt2_dir), "transformer.h.1",
                        [str(corpus_path())], TextConfig(context_size=32),
                        ModelEvalConfig(max_tokens=256, batch_contexts=4))
    tokens = torch.cat(list(token_batches([corpus_path()], load_hf_model(gpt2_dir).tokenizer,
                                          TextConfig(context_size=32), 4, max_contexts=8)))
    keep = ~torch.isin(tokens, torch.tensor([0, 2, 3]))  # <pad>, <bos>, <eos>
    down = result.downstream
    assert down is not None and down.n_predictions == int(keep[:, :-1].sum()) < 8 * 31
    assert result.metrics.n_tokens == int(keep.sum()) and result.metrics.l0 == pytest.approx(8.0)
    assert down.ce_loss_recovered == pytest.approx(
        (down.ce_zero - down.ce_sae) / (down.ce_zero - down.ce_clean))
    assert down.kl_sae > 0 and math.isfinite(down.kl_score)
