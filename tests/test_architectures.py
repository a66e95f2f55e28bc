import dataclasses

import pytest
import torch

import saelab
from saelab.architectures.base import SAE
from saelab.config import ConfigError
from saelab.integrity import write_checksums
from saelab.io import CheckpointError, load, save
from saelab.registry import config_from_dict, get_architecture
from tests.helpers import all_names, ctx, small_options, small_sae

EXPECTED = {"relu", "panneal", "gated", "gated_panneal", "topk", "batchtopk", "jumprelu",
            "matryoshka", "ordered", "transcoder", "crosscoder", "alignsae"}


def test_registry_has_every_architecture():
    assert set(saelab.list_architectures()) == EXPECTED


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown architecture 'nope'.*topk"):
        get_architecture("nope")


def test_unknown_option_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown option.*'kk'"):
        config_from_dict({"architecture": "topk", "kk": 3})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_interface_shapes_and_finite_loss(name):
    sae = small_sae(name)
    rows = torch.randn(64, sae.data_width, generator=torch.Generator().manual_seed(1))
    x, target = sae.split_data(rows)  # a transcoder's rows are [input | target]
    codes = sae.encode(x)
    assert codes.shape == (64, 48)
    assert sae.decode(codes).shape == target.shape
    assert torch.equal(sae(x), sae.reconstruct(x, codes))
    sae.train()
    out = sae.training_loss(rows, ctx(dead=torch.ones(48, dtype=torch.bool)))
    assert torch.isfinite(out.total)
    assert "mse" in out.parts
    out.total.backward()
    grads = {n: p.grad for n, p in sae.named_parameters()}
    assert grads["W_dec"] is not None and torch.isfinite(grads["W_dec"]).all()
    assert grads["W_enc"] is not None and grads["W_enc"].abs().sum() > 0
    assert out.fired_M.dtype == torch.bool and out.fired_M.shape == (48,)


@pytest.mark.parametrize("name", ["topk", "ordered"])
def test_topk_codes_have_exactly_k_nonzeros_at_most(name):
    sae = small_sae(name)
    x = torch.randn(32, 16)
    assert ((sae.encode(x) != 0).sum(-1) <= 4).all()


def test_batchtopk_keeps_batch_times_k_and_learns_threshold():
    sae = small_sae("batchtopk")
    sae.train()
    x = torch.randn(32, 16)
    out = sae.training_loss(x, ctx(step=0))
    assert abs(float(out.l0) - 4.0) < 1e-6
    assert float(sae.threshold) > 0  # learned from the first batch
    sae.eval()
    pre = sae.pre_acts(x)
    expected = pre * (pre > sae.threshold)
    assert torch.equal(sae.encode(x), expected)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_save_load_round_trip_is_exact(tmp_path, name):
    sae = small_sae(name, seed=3)
    x = torch.randn(16, 16)
    if name in ("batchtopk", "matryoshka"):
        sae.train()
        sae.training_loss(x, ctx(step=0))  # learn a threshold so it must round-trip
    if "panneal" in name:
        sae.annealer.p.fill_(0.6)
    sae.eval()
    path = save(sae, tmp_path / name)
    assert (path / "cfg.json").exists() and (path / "sae.safetensors").exists()
    loaded = load(path)
    assert type(loaded) is type(sae)
    assert loaded.cfg == sae.cfg
    for key, value in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.encode(x), sae.encode(x))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fold_input_scale_gives_same_codes_on_raw_inputs(name):
    sae = small_sae(name)
    sae.eval()
    x_raw = torch.randn(64, 16) * 7.0
    s = 0.3
    codes_scaled = sae.encode(x_raw * s)
    recon_scaled = sae.decode(codes_scaled)
    sae.fold_input_scale(s)
    codes_raw = sae.encode(x_raw)
    torch.testing.assert_close(codes_raw, codes_scaled, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(codes_raw), recon_scaled / s, atol=1e-4, rtol=1e-4)


def test_load_errors_name_the_problem(tmp_path):
    sae = small_sae("topk")
    path = save(sae, tmp_path / "ok")
    with pytest.raises(CheckpointError, match="is not a folder"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no cfg\.json"):
        load(tmp_path / "empty")

    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "cfg.json").write_text((path / "cfg.json").read_text())
    with pytest.raises(CheckpointError, match=r"no sae\.safetensors"):
        load(no_weights)

    # Hand-edited folders re-sealed with fresh checksums reach the deeper checks.
    cfg_text = (path / "cfg.json").read_text()
    (path / "cfg.json").write_text(cfg_text.replace('"topk"', '"warpdrive"'))
    write_checksums(path)
    with pytest.raises(CheckpointError, match="unknown architecture 'warpdrive'"):
        load(path)
    (path / "cfg.json").write_text(cfg_text.replace('"d_sae": 48', '"d_sae": 50'))
    write_checksums(path)
    with pytest.raises(CheckpointError, match=r"has shape \(48, 16\).*d_sae=50.*needs \(50, 16\)"):
        load(path)
    (path / "cfg.json").write_text(cfg_text)
    (path / "sae.safetensors").write_bytes(b"garbage")
    write_checksums(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load(path)


def test_edited_or_flipped_saved_sae_is_refused(tmp_path):
    sae = small_sae("topk")
    path = save(sae, tmp_path / "s")
    cfg_text = (path / "cfg.json").read_text()
    for edit in [cfg_text.replace('"k": 4', '"k": 5'), cfg_text.replace('"topk"', '"relu"')]:
        (path / "cfg.json").write_text(edit)
        with pytest.raises(CheckpointError, match=r"cfg\.json failed the sha256 check"):
            load(path)
    (path / "cfg.json").write_text(cfg_text)
    data = bytearray((path / "sae.safetensors").read_bytes())
    data[-5] ^= 0x10
    (path / "sae.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sae\.safetensors failed the sha256 check"):
        load(path)
    (path / "cfg.json").write_text(cfg_text.replace('"format_version": 2', '"format_version": 9'))
    with pytest.raises(CheckpointError, match="format_version 9"):
        load(path)


def test_load_checks_sizes_before_allocating(tmp_path):
    path = save(small_sae("topk"), tmp_path / "s")
    cfg_text = (path / "cfg.json").read_text()
    (path / "cfg.json").write_text(cfg_text.replace('"d_sae": 48', '"d_sae": 1000000000'))
    write_checksums(path)
    with pytest.raises(CheckpointError, match=r"d_sae=1000000000"):
        load(path)  # before the fix: tried to allocate 4·16·1e9 bytes per matrix
    (path / "cfg.json").unlink()
    (path / "cfg.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load(path)


def test_pickle_named_safetensors_is_a_clear_error(tmp_path):
    path = save(small_sae("topk"), tmp_path / "s")
    torch.save({"W": torch.zeros(3)}, path / "sae.safetensors")  # a zip/pickle, not safetensors
    (path / "cfg.json").write_text((path / "cfg.json").read_text()
                                   .replace('"format_version": 2', '"format_version": 1'))
    (path / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load(path)
    import struct

    (path / "sae.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load(path)


def test_repr_and_numpy_input():
    sae = small_sae("topk")
    text = repr(sae)
    assert "topk" in text and "d_in=16" in text and "d_sae=48" in text and "k=4" in text
    import numpy as np

    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    codes = sae.encode(x)
    assert isinstance(codes, torch.Tensor) and codes.shape == (3, 48)
    torch.testing.assert_close(codes, sae.encode(torch.from_numpy(x)))
    torch.testing.assert_close(sae(x), sae(torch.from_numpy(x)))


def test_architecture_mismatch_lists_tensors(tmp_path):
    sae = small_sae("gated")
    path = save(sae, tmp_path / "g")
    cfg_text = (path / "cfg.json").read_text()
    (path / "cfg.json").write_text(cfg_text.replace('"gated"', '"relu"'))
    write_checksums(path)
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*r_mag"):
        load(path)


def test_config_validation_errors():
    with pytest.raises(ConfigError, match="k must be"):
        config_from_dict({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 40}).resolved()
    with pytest.raises(ConfigError, match="width 12"):
        config_from_dict({"architecture": "topk", "d_in": 8, "k": 2}).resolved(12)
    with pytest.raises(ConfigError, match="sum to 1"):
        config_from_dict({"architecture": "matryoshka", "d_in": 8, "d_sae": 16, "k": 2,
                          "group_fractions": [0.5, 0.2]}).resolved()


def test_d_sae_from_expansion():
    cfg = config_from_dict({"architecture": "relu", "expansion": 4}).resolved(10)
    assert (cfg.d_in, cfg.d_sae) == (10, 40)


def test_every_config_field_has_help():
    for name in all_names():
        cls = get_architecture(name).config_class
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"


def test_all_small_options_build():
    for name in all_names():
        assert isinstance(saelab.build(config_from_dict(small_options(name)).resolved()), SAE)
