"""Steering through an SAE: exact edits, α = 0 is a no-op, hooks always removed, positions
through generate() with a KV cache, on a tiny local GPT-2 and a plain nn.Module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from saelab.config import ConfigError
from saelab.models.hf import load_hf_model
from saelab.models.hooks import HookError, capture_with_output
from saelab.models.tiny import TinyTokenModel, build_tiny_gpt2
from saelab.steer import Intervention, LatentEdit, apply_edits, parse_edit, steer_text, steering
from tests.helpers import small_sae

HOOK = "transformer.h.0"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2", n_layer=2, d_model=32)
    return load_hf_model(folder)


def _n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_parse_edit_forms_and_errors() -> None:
    assert parse_edit("12:add:4") == LatentEdit(12, "add", 4.0)
    assert parse_edit("3=clamp:-1.5") == LatentEdit(3, "clamp", -1.5)
    assert parse_edit("7:zero") == LatentEdit(7, "zero")
    for bad in ("x:add:1", "1:add", "1:push:2", "1:scale:abc"):
        with pytest.raises(ConfigError, match="edit"):
            parse_edit(bad)


def test_apply_edits_each_op() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    edits = [LatentEdit(0, "add", 2), LatentEdit(1, "clamp", 7), LatentEdit(2, "scale", 0.5),
             LatentEdit(3, "zero")]
    assert apply_edits(z, edits).tolist() == [[3.0, 7.0, 1.5, 0.0]]
    assert z.tolist() == [[1.0, 2.0, 3.0, 4.0]]  # the input is not modified


def test_alpha_zero_is_bit_identical_forward_and_generate(gpt2) -> None:  # type: ignore[no-untyped-def]
    model, tok = gpt2.model, gpt2.tokenizer
    sae = small_sae("topk", d_in=32, d_sae=64)
    ids = tok("the cat sat on the", return_tensors="pt")["input_ids"]
    iv = Intervention(sae, HOOK, [LatentEdit(5, "add", 0.0), LatentEdit(9, "scale", 1.0)])
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with steering(model, [iv]):
            steered = model(input_ids=ids).logits
    assert torch.equal(clean, steered)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tok.pad_token_id}
    plain = model.generate(input_ids=ids, **kwargs)
    with steering(model, [iv]):
        same = model.generate(input_ids=ids, **kwargs)
    assert torch.equal(plain, same)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_one_latent_edit_changes_activation_by_exactly_the_decode_difference(arch: str) -> None:
    model = TinyTokenModel(vocab_size=50, d_model=16)
    sae = small_sae(arch, d_in=16, d_sae=48)
    tokens = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    _, clean = capture_with_output(model, ["blocks.0"], lambda: model(tokens))
    x = next(iter(clean.values()))
    edit = LatentEdit(11, "clamp", 3.0)
    with steering(model, [Intervention(sae, "blocks.0", [edit])]):
        _, got = capture_with_output(model, ["blocks.0"], lambda: model(tokens))
    x_steered = next(iter(got.values()))
    with torch.no_grad():
        z = sae.encode(x)
        expected = sae.decode(apply_edits(z, [edit])) - sae.decode(z)
        torch.testing.assert_close(x_steered - x, expected, atol=1e-5, rtol=1e-4)
        assert expected.abs().max() > 0.1  # the edit really moved the activation
        # the difference is along latent 11's decoder row only
        direction = sae.W_dec[11] / sae.W_dec[11].norm()
        diff = (x_steered - x).reshape(-1, 16)
        residual = diff - (diff @ direction)[:, None] * direction
        assert residual.abs().max() < 1e-5
    # without the error term the activation becomes the plain reconstruction
    with steering(model, [Intervention(sae, "blocks.0", [edit], keep_error=False)]):
        _, got = capture_with_output(model, ["blocks.0"], lambda: model(tokens))
    with torch.no_grad():
        torch.testing.assert_close(next(iter(got.values())),
                                   sae.decode(apply_edits(sae.encode(x), [edit])))


def test_positions_edit_only_those_tokens() -> None:
    model = TinyTokenModel(vocab_size=50, d_model=16)
    sae = small_sae("topk", d_in=16, d_sae=48)
    tokens = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    _, clean = capture_with_output(model, ["blocks.1"], lambda: model(tokens))
    iv = Intervention(sae, "blocks.1", [LatentEdit(4, "add", 5.0)], positions=[1, 4])
    with steering(model, [iv]) as editors:
        _, got = capture_with_output(model, ["blocks.1"], lambda: model(tokens))
    changed = (next(iter(got.values())) - next(iter(clean.values()))).abs().sum(-1) > 0
    assert changed.tolist() == [[False, True, False, False, True, False]] * 2
    assert editors[0].edited_positions == [1, 4]
    torch.testing.assert_close((next(iter(got.values())) - next(iter(clean.values())))[0, 1],
                               5.0 * sae.W_dec[4].detach())


def test_hooks_removed_after_use_and_when_generation_raises(gpt2) -> None:  # type: ignore[no-untyped-def]
    model, tok = gpt2.model, gpt2.tokenizer
    before = _n_hooks(model)
    ids = tok("the cat", return_tensors="pt")["input_ids"]
    good = Intervention(small_sae("topk", d_in=32, d_sae=64), HOOK, [LatentEdit(1, "add", 3)])
    with steering(model, [good]):
        assert _n_hooks(model) == before + 1
        model.generate(input_ids=ids, max_new_tokens=2, pad_token_id=tok.pad_token_id)
    assert _n_hooks(model) == before
    wrong_width = Intervention(small_sae("topk", d_in=16, d_sae=48), "transformer.h.1",
                               [LatentEdit(1, "add", 3)])
    with pytest.raises(HookError, match="width 32"), steering(model, [good, wrong_width]):
        model.generate(input_ids=ids, max_new_tokens=2, pad_token_id=tok.pad_token_id)
    assert _n_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"), steering(model, [good]):
        raise RuntimeError("boom")
    assert _n_hooks(model) == before


def test_hook_that_never_runs_is_an_error() -> None:
    model = TinyTokenModel(vocab_size=20, d_model=16, n_blocks=2)
    model.unused = nn.Linear(16, 16)
    iv = Intervention(small_sae("relu", d_in=16), "unused", [LatentEdit(0, "add", 1)])
    with pytest.raises(HookError, match="never ran"), steering(model, [iv]):
        model(torch.zeros(1, 3, dtype=torch.long))


def test_bad_latent_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="48 latents"):
        Intervention(small_sae("relu", d_in=16, d_sae=48), "blocks.0", [LatentEdit(48, "zero")])


def test_steering_a_tiny_gpt2_through_generate(gpt2) -> None:  # type: ignore[no-untyped-def]
    model, tok = gpt2.model, gpt2.tokenizer
    sae = small_sae("topk", d_in=32, d_sae=64)
    prompt = "the old man walked to the"
    n_prompt = tok(prompt, return_tensors="pt")["input_ids"].shape[1]
    strong = [Intervention(sae, HOOK, [LatentEdit(j, "add", 40.0) for j in (3, 17)])]
    result = steer_text(model, tok, prompt, strong, max_new_tokens=8)
    assert result.steered != result.unsteered and result.kl_next_token > 0.01
    assert result.to_dict()["interventions"][0]["edits"] == ["3:add:40", "17:add:40"]
    zero = steer_text(model, tok, prompt, [Intervention(sae, HOOK, [LatentEdit(3, "add", 0.0)])],
                      max_new_tokens=8)
    assert zero.steered == zero.unsteered and zero.kl_next_token == 0.0
    # an edit at one generated position: the prompt's distribution is untouched, and the
    # position count survives the KV cache (greedy replay of the output agrees)
    late = [Intervention(sae, HOOK, [LatentEdit(3, "add", 40.0)], positions=[n_prompt + 1])]
    result = steer_text(model, tok, prompt, late, max_new_tokens=6)
    assert result.kl_mean_prompt == 0.0
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with steering(model, late) as editors:
        out = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert editors[0].edited_positions == [n_prompt + 1]
    with torch.no_grad(), steering(model, late):
        replay = model(input_ids=out[:, :-1]).logits.argmax(-1)
    assert torch.equal(replay[0, n_prompt - 1:], out[0, n_prompt:])


def test_steer_text_needs_interventions(gpt2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="at least one"):
        steer_text(gpt2.model, gpt2.tokenizer, "hi", [])


def test_cli_prints_side_by_side_and_kl(gpt2, tmp_path: Path,  # type: ignore[no-untyped-def]
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from saelab.cli import main
    from saelab.io import save

    folder = tmp_path / "gpt2"
    gpt2.model.save_pretrained(folder)
    gpt2.tokenizer.save_pretrained(folder)
    sae_dir = save(small_sae("topk", d_in=32, d_sae=64), tmp_path / "sae")
    out = tmp_path / "steer.json"
    assert main(["steer", str(sae_dir), "--model", str(folder), "--hook", HOOK, "--prompt",
                 "the town is", "--edit", "3:add:40", "--max-new-tokens", "5",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "unsteered" in text and "| steered" in text and "KL(p_unsteered || p_steered)" in text
    saved = json.loads(out.read_text())["results"][0]
    assert saved["kl_next_token"] > 0 and saved["interventions"][0]["edits"] == ["3:add:40"]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"interventions": [
        {"sae": str(sae_dir), "hook": HOOK, "edits": ["3:add:0"]},
        {"sae": str(sae_dir), "hook": "transformer.h.1", "edits": ["5:scale:1"],
         "positions": [0]}]}))
    assert main(["steer", "--spec", str(spec), "--model", str(folder), "--prompt", "the town",
                 "--max-new-tokens", "3", "--json", str(out)]) == 0
    capsys.readouterr()
    assert json.loads(out.read_text())["results"][0]["kl_next_token"] == 0.0
    assert main(["steer", str(sae_dir), "--model", str(folder), "--hook", HOOK, "--prompt",
                 "x", "--edit", "3:push:1"]) == 2
    assert "bad edit" in capsys.readouterr().err
