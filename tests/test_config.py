import argparse
from dataclasses import dataclass

import pytest

from saelab.config import ConfigError, add_arguments, args_to_dict, from_dict, load_file, option
from saelab.run_config import load_run_config
from saelab.training.config import TrainConfig


@dataclass
class Inner:
    n: int = option(3, "an int")
    names: list[str] = option(["a"], "a list")
    maybe: float | None = option(None, "optional float")
    on: bool = option(True, "a flag")


def test_from_dict_is_strict_and_typed():
    assert from_dict(Inner, {"n": 5, "maybe": 2}).maybe == 2.0
    with pytest.raises(ConfigError, match=r"n: expected an integer, got 'x'"):
        from_dict(Inner, {"n": "x"})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['m'\]"):
        from_dict(Inner, {"m": 1})
    with pytest.raises(ConfigError, match="expected true/false"):
        from_dict(Inner, {"on": 1})


def test_defaults_are_not_shared_between_instances():
    a, b = Inner(), Inner()
    a.names.append("b")
    assert b.names == ["a"]


def test_cli_flags_generated_from_dataclass():
    p = argparse.ArgumentParser()
    add_arguments(p, Inner)
    ns = p.parse_args(["--n", "7", "--names", "x", "y", "--no-on"])
    assert args_to_dict(ns, Inner) == {"n": 7, "names": ["x", "y"], "on": False}
    assert "an int" in p.format_help()


def test_run_config_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("""out = "runs/x"
[data]
path = "acts.npy"
[train]
total_tokens = 100_000
[saes.a]
architecture = "topk"
k = 8
[saes.b]
architecture = "jumprelu"
l0_coefficient = 2.0
lr = 1e-4
""")
    cfg = load_run_config(load_file(path))
    saes = cfg.sae_configs()
    assert saes["a"].k == 8 and saes["b"].lr == 1e-4
    assert cfg.train.total_tokens == 100_000


def test_run_config_errors_name_the_place(tmp_path):
    with pytest.raises(ConfigError, match=r"saes\.a: unknown option.*'kk'"):
        load_run_config({"saes": {"a": {"architecture": "topk", "kk": 1}}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(bad)


def test_lr_schedule_warmup_plateau_decay():
    cfg = TrainConfig(total_tokens=100 * 10, batch_size=10, lr_warmup_steps=10, lr_decay_start=0.8)
    assert cfg.lr_scale(0) == pytest.approx(0.1)
    assert cfg.lr_scale(50) == 1.0
    assert cfg.lr_scale(90) == pytest.approx(0.5)
    assert cfg.lr_scale(99) == pytest.approx(0.05)
