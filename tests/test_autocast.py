"""bf16 autocast (``TrainConfig.autocast = "bf16"``): trains close to fp32, and what must stay
fp32 does (parameters, gradients, Adam state, the loss and its parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from saelab.architectures.base import StepContext
from saelab.data.arrays import ArrayFileSource
from saelab.registry import build, config_from_dict
from saelab.training import Trainer
from saelab.training.run_folder import comparable_config
from tests import dist_workers as W

ARCHS: dict[str, dict[str, Any]] = {
    "topk": {"architecture": "topk", "d_sae": 48, "k": 3},  # the sparse path
    "jumprelu": {"architecture": "jumprelu", "d_sae": 48},
    "gated": {"architecture": "gated", "d_sae": 48},
}


def _train(tmp: Path, data: Path, autocast: str) -> Trainer:
    cfg = W.train_config(total_tokens=64 * 40, checkpoint_every=0, autocast=autocast,
                         dead_after_tokens=10**6)
    t = Trainer({n: config_from_dict(o) for n, o in ARCHS.items()}, cfg,
                ArrayFileSource(data, seed=0), tmp / autocast)
    t.fit()
    return t


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trainer]:
    tmp = tmp_path_factory.mktemp("autocast")
    data = W.make_data(tmp / "acts.npy", rows=1024)
    with pytest.warns(UserWarning) if not _native_bf16() else _nothing():
        bf16 = _train(tmp, data, "bf16")
    return {"off": _train(tmp, data, "off"), "bf16": bf16}


def _native_bf16() -> bool:
    from saelab.ops import native_low_precision_matmul

    return native_low_precision_matmul()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_bf16_autocast_trains_close_to_fp32(runs: dict[str, Trainer]) -> None:
    fp32, bf16 = runs["off"], runs["bf16"]
    for name in ARCHS:
        ev32 = fp32.last_metrics[name]["explained_variance"]
        ev16 = bf16.last_metrics[name]["explained_variance"]
        assert ev32 > 0.4, f"{name}: the fp32 run did not train"
        assert abs(ev16 - ev32) < 0.02, f"{name}: bf16 EV {ev16:.4f} vs fp32 {ev32:.4f}"
        a, b = fp32.saes[name].state_dict(), bf16.saes[name].state_dict()
        # bf16 was really used: the weights differ (by bf16 rounding, not more)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert 1e-4 < diff < 0.1, f"{name}: max weight difference {diff}"


def test_master_weights_and_adam_state_stay_fp32(runs: dict[str, Trainer]) -> None:
    t = runs["bf16"]
    for name, sae in t.saes.items():
        assert {p.dtype for p in sae.parameters()} == {torch.float32}, name
        state = t.slots[name].optimizer.state_dict()["state"]
        dtypes = {v.dtype for st in state.values() for k, v in st.items() if k != "step"}
        assert dtypes == {torch.float32}, name


@pytest.mark.parametrize("name", [*ARCHS, "relu"])
def test_loss_and_its_parts_are_fp32_under_autocast(name: str) -> None:
    opts = ARCHS.get(name, {"architecture": name, "d_sae": 48})
    sae = build(config_from_dict(opts).resolved(W.D_IN))
    x = torch.randn(32, W.D_IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae.training_loss(x, StepContext(0, 10))
        codes = sae.encode(x)  # the fp32 bias add promotes the bf16 product back to fp32
    assert codes.dtype == torch.float32
    assert out.total.dtype == torch.float32
    assert {k: v.dtype for k, v in out.parts.items()} == dict.fromkeys(out.parts, torch.float32)
    out.total.backward()
    assert {p.grad.dtype for p in sae.parameters() if p.grad is not None} == {torch.float32}


def test_runs_saved_before_the_option_resume_with_autocast_off() -> None:
    old = {"train": {"lr": 1e-3}}
    assert comparable_config({"train": {"lr": 1e-3, "autocast": "off"}}) == comparable_config(old)
    assert comparable_config({"train": {"lr": 1e-3, "autocast": "bf16"}}) != comparable_config(old)
