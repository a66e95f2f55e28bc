"""Automatic L0 during training (Chanin & Garriga-Alonso, App. A.11; methods.md section 5).

Not an architecture: a controller that TopK-family SAEs own when ``auto_l0 = true``. It starts at
the configured ``k`` (start high: moving L0 from high to low recovers the right features, from low
to high does not) and, every ``auto_l0_every`` steps:

1. m = mean of the proxy (``auto_l0_metric``: c_dec by default, or the paper's s_n^dec) over the last ``auto_l0_window`` steps of the period (the SAE has had the
   rest of the period to adapt to the current L0);
2. ĝ = (m_t − m_{t−1}) / δ_{t−1}, the finite-difference slope of the proxy in L0;
3. ĝ_b = clip(ĝ − b·|ĝ|, −1, 1): biased towards "raise L0" (too low an L0 is the worse error);
4. one Adam step on L0 with ĝ_b as the gradient gives a proposed change; its size is clipped to
   [δ_min, δ_max] keeping its sign, so the next finite difference never divides by ~0.

Before that, the SAE trains at the starting L0 for ``auto_l0_start`` of training, because the proxy
moves fast while the SAE first learns and would swamp the slope. The first period has no slope
yet and moves L0 down by δ_max. All state lives in buffers, so it
is checkpointed, resumed exactly and saved with the final SAE (``auto_l0.l0`` is the learned L0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saelab.config import ConfigError, option
from saelab.metrics.proxies import decoder_pairwise_cosine, nth_decoder_projection

_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@dataclass
class AutoL0Options:
    """Options of the automatic-L0 controller (mixed into TopK-family configs)."""

    auto_l0: bool = option(False, "learn L0 during training from a correct-L0 proxy, starting at "
                                  "k (start high); the learned L0 is logged and saved")
    auto_l0_start: float = option(0.1, "auto-L0: share of training at the starting L0 before the "
                                  "first change (the proxy drifts fast while the SAE first learns)")
    auto_l0_stop: float = option(0.5, "auto-L0: share of training after which L0 stays fixed at "
                                 "the learned value, so the SAE settles at it (1 = never)")
    auto_l0_every: int = option(100, "auto-L0: steps between L0 changes")
    auto_l0_window: int = option(10, "auto-L0: steps at the end of each period averaged into m")
    auto_l0_metric: Literal["s_n_dec", "c_dec"] = option(
        "c_dec", "auto-L0: proxy minimised: c_dec (costs latents²·d per measured step, about "
        "10% of steps) or s_n_dec (the paper's appendix; less reliable on saelab's toy runs)")
    auto_l0_n: int = option(0, "auto-L0: n of s_n^dec (0 = half the latents)")
    auto_l0_lr: float = option(1.0, "auto-L0: Adam learning rate on L0 (in L0 units)")
    auto_l0_bias: float = option(0.1, "auto-L0: b in ĝ_b = ĝ − b·|ĝ| (bias towards higher L0)")
    auto_l0_delta_min: float = option(0.5, "auto-L0: smallest |δ| per change, in (0, 1]")
    auto_l0_delta_max: float = option(2.0, "auto-L0: largest |δ| per change, in [1, 5]")
    auto_l0_min: float = option(1.0, "auto-L0: L0 never goes below this")
    auto_l0_dither: float = option(
        1.0, "auto-L0: alternate the applied L0 by ± this around the learned one and estimate "
             "the slope from second differences, which cancels the proxy's drift during "
             "training (saelab's addition; 0 = the paper's first differences)")

    def validate_auto_l0(self, d_sae: int) -> None:
        if not self.auto_l0:
            return
        if self.auto_l0_every < 2 or not 1 <= self.auto_l0_window < self.auto_l0_every:
            raise ConfigError("auto-L0 needs auto_l0_every >= 2 and 1 <= auto_l0_window < "
                              f"auto_l0_every, got {self.auto_l0_every} and {self.auto_l0_window}")
        if self.auto_l0_n and not 1 <= self.auto_l0_n < d_sae:
            raise ConfigError(f"auto_l0_n must be in [1, d_sae - 1 = {d_sae - 1}], got "
                              f"{self.auto_l0_n}; it should exceed any plausible L0")
        if not 0 < self.auto_l0_delta_min <= self.auto_l0_delta_max:
            raise ConfigError("auto-L0 needs 0 < auto_l0_delta_min <= auto_l0_delta_max, got "
                              f"{self.auto_l0_delta_min} and {self.auto_l0_delta_max}")
        if not 0 <= self.auto_l0_start < self.auto_l0_stop <= 1:
            raise ConfigError("auto-L0 needs 0 <= auto_l0_start < auto_l0_stop <= 1 (shares of "
                              f"training), got {self.auto_l0_start} and {self.auto_l0_stop}")
        if self.auto_l0_dither < 0:
            raise ConfigError(f"auto_l0_dither must be >= 0, got {self.auto_l0_dither}")
        if self.auto_l0_lr <= 0 or self.auto_l0_bias < 0 or self.auto_l0_min < 1:
            raise ConfigError("auto-L0 needs auto_l0_lr > 0, auto_l0_bias >= 0, auto_l0_min >= 1")


class AutoL0(nn.Module):
    """The controller's state (buffers) and update rule; see the module docstring."""

    l0: Tensor
    base: Tensor
    dither_sign: Tensor
    hist_l0: Tensor
    hist_m: Tensor
    metric: Tensor
    window_sum: Tensor
    window_count: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_t: Tensor

    def __init__(self, opts: AutoL0Options, start_l0: float, d_sae: int) -> None:
        super().__init__()
        self.opts, self.d_sae = opts, d_sae
        self.n = opts.auto_l0_n or max(1, d_sae // 2)
        for name, value in (("l0", start_l0), ("base", start_l0), ("dither_sign", 1.0),
                            ("metric", math.nan), ("window_sum", 0.0), ("window_count", 0.0),
                            ("adam_m", 0.0), ("adam_v", 0.0), ("adam_t", 0.0)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float64))
        # the applied L0 and the metric of the last three periods (oldest first)
        self.register_buffer("hist_l0", torch.full((3,), math.nan, dtype=torch.float64))
        self.register_buffer("hist_m", torch.full((3,), math.nan, dtype=torch.float64))

    @property
    def value(self) -> float:
        """The learned (fractional) L0: the base value, without the dither."""
        return float(self.base)

    @property
    def applied(self) -> float:
        """The L0 applied in training this period (the learned L0 ± the dither)."""
        return float(self.l0)

    @torch.no_grad()
    def observe(self, step: int, total_steps: int, acts_BD: Tensor, W_dec_MD: Tensor,
                b_dec_D: Tensor) -> None:
        """Call once per training step, before the SAE's weights change in it."""
        every, window = self.opts.auto_l0_every, self.opts.auto_l0_window
        start = int(self.opts.auto_l0_start * total_steps)
        if step >= self.opts.auto_l0_stop * total_steps:
            if float(self.l0) != float(self.base):
                self.finish()
            return
        if step < start:
            return
        phase = (step - start) % every
        if phase < every - window:
            return
        if self.opts.auto_l0_metric == "c_dec":
            self.window_sum += decoder_pairwise_cosine(W_dec_MD)
        else:
            self.window_sum += nth_decoder_projection(acts_BD, W_dec_MD, b_dec_D, self.n)
        self.window_count += 1
        if phase == every - 1:
            self._update(float(self.window_sum / self.window_count))
            self.window_sum.zero_()
            self.window_count.zero_()

    def _update(self, metric: float) -> None:
        o = self.opts
        self.hist_l0.copy_(torch.cat([self.hist_l0[1:], self.l0.view(1)]))
        self.hist_m.copy_(torch.cat([self.hist_m[1:], torch.tensor([metric], dtype=torch.float64)]))
        slope = self._slope()
        if slope is None:
            proposal = -o.auto_l0_delta_max
        else:
            grad = max(-1.0, min(1.0, slope - o.auto_l0_bias * abs(slope)))
            self.adam_t += 1
            self.adam_m.mul_(_ADAM_BETA1).add_((1 - _ADAM_BETA1) * grad)
            self.adam_v.mul_(_ADAM_BETA2).add_((1 - _ADAM_BETA2) * grad * grad)
            t = float(self.adam_t)
            m_hat = float(self.adam_m) / (1 - _ADAM_BETA1**t)
            v_hat = float(self.adam_v) / (1 - _ADAM_BETA2**t)
            proposal = -o.auto_l0_lr * m_hat / (math.sqrt(v_hat) + _ADAM_EPS)
        size = min(o.auto_l0_delta_max, max(o.auto_l0_delta_min, abs(proposal)))
        direction = -1.0 if proposal < 0 else 1.0
        dither = o.auto_l0_dither
        old = float(self.base)
        low, high = o.auto_l0_min + dither, float(self.d_sae) - dither
        new = min(high, max(low, old + direction * size))
        if abs(new - old) < o.auto_l0_delta_min:
            # Pinned at a bound: step back inside and forget the momentum that pushed it there,
            # so the next slope is measured rather than the controller staying stuck.
            new = min(high, max(low, old - direction * o.auto_l0_delta_min))
            self.adam_m.zero_()
        self.metric.fill_(metric)
        self.base.fill_(new)
        self.dither_sign.neg_()
        self.l0.fill_(new + float(self.dither_sign) * dither)

    def finish(self) -> None:
        """Drop the dither once the controller has stopped: train on at the learned L0."""
        self.l0.copy_(self.base)

    def _slope(self) -> float | None:
        """d(metric)/d(L0) from the recent periods, or None while there are too few.

        Without dither: (m_t − m_{t−1}) / (L_t − L_{t−1}), the paper's estimate. With dither the
        applied L0 alternates ± ε around the base, and the second differences
        (m_t − 2m_{t−1} + m_{t−2}) / (L_t − 2L_{t−1} + L_{t−2}) cancel a drift of the metric that
        is linear in time (the SAE keeps learning), which the first difference mistakes for slope.
        """
        l0s, ms = self.hist_l0.tolist(), self.hist_m.tolist()
        if self.opts.auto_l0_dither == 0:
            if math.isnan(ms[-2]):
                return None
            step = l0s[-1] - l0s[-2]
            return (ms[-1] - ms[-2]) / step if step != 0 else 0.0
        if math.isnan(ms[0]):
            return None
        step = l0s[2] - 2 * l0s[1] + l0s[0]
        if abs(step) < self.opts.auto_l0_dither:
            return 0.0
        return (ms[2] - 2 * ms[1] + ms[0]) / step

    def log_extras(self) -> dict[str, float]:
        return {"auto_l0": self.value, "auto_l0_applied": float(self.l0),
                "auto_l0_metric": float(self.metric)}
