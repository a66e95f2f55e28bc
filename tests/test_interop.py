"""SAELens and dictionary_learning folders, both ways.

The fixture folders under tests/fixtures/peers/ were made and saved by SAELens 6.54.12 and
dictionary_learning 0.1.0 themselves (benchmarks/peer_interop.py --write-fixtures), together
with the peers' own codes and reconstructions of x.npy, so these tests check saelab against
the real libraries without them being installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import saelab
from saelab.cli import main
from saelab.interop import InteropError, detect_format, export
from saelab.interop.dictionary_learning import DICT_CLASS
from saelab.interop.saelens import SAELENS_ARCH
from tests.helpers import small_sae

FIXTURES = Path(__file__).parent / "fixtures" / "peers"
INDEX = json.loads((FIXTURES / "index.json").read_text())
X = torch.from_numpy(np.load(FIXTURES / "x.npy"))


@pytest.mark.parametrize("name", sorted(INDEX["saes"]))
def test_peer_made_folder_loads_with_the_peers_codes_and_reconstruction(name):
    folder = FIXTURES / name
    sae = saelab.load(folder)
    with torch.no_grad():
        codes = sae.encode(X)
        recon = sae.decode(codes)
    torch.testing.assert_close(codes, torch.from_numpy(np.load(folder / "expected_codes.npy")),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, torch.from_numpy(np.load(folder / "expected_recon.npy")),
                               atol=1e-5, rtol=1e-5)
    assert sae.cfg.hook_name and sae.cfg.model_name == "tiny-model"


def test_fixtures_cover_apply_b_dec_to_input_false():
    cfg = json.loads((FIXTURES / "saelens" / "topk_no_bdec_in" / "cfg.json").read_text())
    assert cfg["apply_b_dec_to_input"] is False
    b_dec = saelab.load(FIXTURES / "saelens" / "topk_no_bdec_in").b_dec
    assert b_dec.abs().sum() > 0  # the fold is not trivially exact


def trained_like(name: str) -> saelab.SAE:
    sae = small_sae(name, seed=3)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, sae.cfg.d_sae)[:, None])  # folded input scale
        if "threshold" in dict(sae.named_buffers()):
            sae.threshold.fill_(0.2)  # type: ignore[operator]
    return sae.eval()


@pytest.mark.parametrize("fmt,mapping", [("saelens", SAELENS_ARCH),
                                         ("dictionary_learning", DICT_CLASS)])
def test_export_and_reload_every_mapped_architecture(tmp_path, fmt, mapping):
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(0)) * 2
    for name in sorted(mapping):
        sae = trained_like(name)
        folder = export(sae, tmp_path / fmt, fmt, sae_id=name).folder
        assert detect_format(folder) == fmt
        back = saelab.load(folder)
        assert back.name == name  # the saelab section restores the exact architecture
        # the peers' own reading of the same tensors (saelab section dropped)
        generic = tmp_path / f"generic_{name}"
        shutil.copytree(folder, generic)
        cfg_file = generic / ("cfg.json" if fmt == "saelens" else "config.json")
        cfg = json.loads(cfg_file.read_text())
        cfg.pop("saelab")
        cfg_file.write_text(json.dumps(cfg))
        plain = saelab.load(generic)
        with torch.no_grad():
            for other in (back, plain):
                torch.testing.assert_close(other.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(other(x), sae(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["saelens", "dictionary_learning"])
@pytest.mark.parametrize("name", ["transcoder", "crosscoder"])
def test_no_counterpart_is_refused_and_writes_nothing(tmp_path, fmt, name):
    with pytest.raises(InteropError, match=r"no .* counterpart"):
        export(small_sae(name), tmp_path / "out", fmt)
    assert not any((tmp_path / "out").glob("*/*"))


def test_unsupported_saelens_settings_are_named(tmp_path):
    folder = tmp_path / "sae"
    shutil.copytree(FIXTURES / "saelens" / "standard", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["normalize_activations"] = "layer_norm"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InteropError, match="normalize_activations"):
        saelab.load(folder)


def test_export_command_writes_hub_layout_and_keeps_existing(tmp_path, capsys):
    sae = trained_like("jumprelu")
    sae.cfg.model_name, sae.cfg.hook_name = "org/model", "model.layers.3"
    saelab.save(sae, tmp_path / "mine")
    out = tmp_path / "hub"
    assert main(["export", str(tmp_path / "mine"), "--to", "saelens", "--out", str(out)]) == 0
    folder = out / "model.layers.3"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "org/model"
    assert cfg["metadata"]["hook_name"] == "model.layers.3"
    assert cfg["architecture"] == "jumprelu" and cfg["dtype"] == "float32"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "base_model:\n- org/model" in card
    assert "SAE.load_from_disk" in card
    before = (folder / "sae_weights.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "mine"), "--to", "saelens", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (folder / "sae_weights.safetensors").read_bytes() == before
    assert main(["export", str(tmp_path / "mine"), "--to", "dictionary_learning", "--out",
                 str(out), "--sae-id", "dl"]) == 0
    card = (out / "README.md").read_text()
    assert "`dl` | dictionary_learning" in card and "`model.layers.3` | saelens" in card
