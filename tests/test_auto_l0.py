"""Automatic L0: the controller's update rule, and that it moves L0 toward the truth on a toy."""

import json
import math

import pytest
import torch

from saelab.architectures.auto_l0 import AutoL0, AutoL0Options
from saelab.data.toy import ToySource
from saelab.io import load
from saelab.registry import config_from_dict
from saelab.toy import ToyConfig, ToyModel
from saelab.training import TrainConfig, Trainer


def _controller(**opts: float) -> AutoL0:
    o = AutoL0Options(auto_l0=True, auto_l0_every=10, auto_l0_window=2, auto_l0_start=0.0,
                      auto_l0_dither=0.0, **opts)  # type: ignore[arg-type]
    return AutoL0(o, start_l0=20.0, d_sae=64)


def test_first_change_goes_down_by_delta_max_then_follows_the_slope():
    ctl = _controller(auto_l0_delta_max=2.0, auto_l0_delta_min=0.5, auto_l0_lr=1.0,
                      auto_l0_bias=0.1)
    ctl._update(1.0)
    assert ctl.value == 18.0
    # the metric fell when L0 fell: slope = (0.8 − 1.0)/(−2) = +0.1 > 0 → keep lowering L0.
    # Adam's first step has size lr·|m̂|/√v̂ = 1 (in [δ_min, δ_max]).
    ctl._update(0.8)
    assert ctl.value == pytest.approx(17.0)
    # the metric rose a lot: slope −1 (clipped), Adam's m̂ turns negative → raise L0
    ctl._update(1.8)
    assert ctl.value > 17.0


def test_bias_pushes_up_when_the_slope_is_noise_free_zero():
    ctl = _controller(auto_l0_bias=0.1)
    ctl._update(1.0)
    start = ctl.value
    ctl._update(1.0)  # slope 0 → ĝ_b = 0, Adam step 0 → minimum size δ_min, sign +
    assert ctl.value == pytest.approx(start + 0.5)


def test_pinned_at_a_bound_steps_back_inside():
    o = AutoL0Options(auto_l0=True, auto_l0_every=10, auto_l0_window=2, auto_l0_start=0.0,
                      auto_l0_dither=0.0)
    ctl = AutoL0(o, start_l0=1.2, d_sae=8)
    ctl._update(1.0)  # wants −2, clipped to 1.0: |δ| = 0.2 < δ_min → bounces up by δ_min
    assert ctl.value == pytest.approx(1.7)


def _tiny_toy(seed: int = 0) -> ToyModel:
    # 12 independent features firing at 0.2 each (true L0 2.4), orthogonal in 24 dims
    return ToyModel(ToyConfig(n_features=12, d_model=24, firing="explicit",
                              firing_probs=[0.2] * 12, correlation="none", seed=seed))


def _train(tmp_path, steps: int, seed: int = 0, checkpoint_every: int = 0):
    toy = _tiny_toy(seed)
    train = TrainConfig(total_tokens=steps * 256, batch_size=256, lr=3e-3, lr_warmup_steps=10,
                        lr_decay_start=1.0, checkpoint_every=checkpoint_every, log_every=25,
                        progress=False, measure_peak=False, init_samples=1024, seed=seed)
    cfg = config_from_dict({"architecture": "batchtopk", "d_sae": 12, "k": 8, "auto_l0": True,
                            "auto_l0_every": 25, "auto_l0_window": 5, "auto_l0_start": 0.1,
                            "auto_l0_metric": "c_dec", "auto_l0_stop": 0.9,
                            "sparse_kernels": False,
                            "threshold_start_step": steps // 2})
    return toy, Trainer({"a": cfg}, train, ToySource(toy, seed=seed), tmp_path)


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_l0_moves_toward_the_truth_on_a_tiny_toy(tmp_path, seed):
    toy, trainer = _train(tmp_path, 400, seed=seed)
    start = trainer.saes["a"].cfg.k
    sae = trainer.fit()["a"]
    learned = sae.auto_l0.value
    # started at 8 with the truth at 2.4: it must end within 1 of the truth (the same run with
    # the update's sign flipped ends 2.6-2.9 away)
    assert abs(learned - toy.true_l0) < 1.0, learned
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert records[-1]["auto_l0"] == pytest.approx(learned)
    assert records[0]["auto_l0"] == start  # logged from the first record, unchanged in warm-up
    # the dither is gone once the controller stops: training ends at the learned L0
    assert records[-1]["auto_l0_applied"] == pytest.approx(learned)
    saved = load(tmp_path / "final" / "a")
    assert saved.auto_l0.value == pytest.approx(learned)
    assert not math.isnan(float(saved.auto_l0.metric))


class _Interrupted(Exception):
    pass


class _StopAfter:
    """A source that stops (as if the job were killed) after `n` batches."""

    def __init__(self, source: ToySource, n: int) -> None:
        self.source, self.n, self.d_in = source, n, source.d_in

    def sample(self, n: int) -> torch.Tensor:
        return self.source.sample(n)

    def batches(self, batch_size: int, start_batch: int = 0):
        for i, batch in enumerate(self.source.batches(batch_size, start_batch)):
            if i >= self.n:
                raise _Interrupted
            yield batch


def test_auto_l0_resumes_exactly(tmp_path):
    # a checkpoint at step 57 falls inside a measuring window (steps 55-59)
    _, full = _train(tmp_path / "full", 100)
    full_value = full.fit()["a"].auto_l0.value
    _, part = _train(tmp_path / "part", 100, checkpoint_every=57)
    part.source = _StopAfter(part.source, 60)
    with pytest.raises(_Interrupted):
        part.fit()
    _, resumed = _train(tmp_path / "part", 100, checkpoint_every=57)
    assert resumed.fit()["a"].auto_l0.value == full_value
    assert torch.equal(resumed.saes["a"].W_dec, full.saes["a"].W_dec)
