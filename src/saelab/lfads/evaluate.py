"""Inference and evaluation of a trained LFADS model on held-out test trials, and its report
(``lfads_eval.json``, ``lfads_eval.md`` and ``lfads_rates.png``: inferred rates against the
truth)."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from saelab.config import ConfigError
from saelab.io import atomic_write_bytes, atomic_write_json
from saelab.lfads.data import SpikeData
from saelab.lfads.metrics import co_bps, decoding_r2, latent_r2, poisson_log_likelihood, rate_r2
from saelab.lfads.model import LFADS


@torch.no_grad()
def infer(model: LFADS, spikes: np.ndarray, batch_size: int = 256
          ) -> tuple[np.ndarray, np.ndarray]:
    """Rates (spikes per bin, all channels incl. held-out) and factors for ``spikes``
    ([trials, time, channels]; only the input channels are read), posterior means."""
    model.eval()
    n_in = model.cfg.n_neurons
    rates, factors = [], []
    for start in range(0, len(spikes), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(spikes[start:start + batch_size, :, :n_in],
                                                  dtype=np.float32))
        out = model(x, sample=False)
        rates.append(torch.exp(out.log_rates).numpy())
        factors.append(out.factors.numpy())
    return np.concatenate(rates), np.concatenate(factors)


@dataclass
class LFADSEval:
    """Metrics on the test trials (never trained on). NaN where the data lacks what a metric
    needs (true rates, latents, behaviour, held-out neurons)."""

    n_train_trials: int
    n_test_trials: int
    rate_r2: float  # inferred vs true rates (variance-weighted), all channels, test trials
    heldout_rate_r2: float  # the same on held-out neurons only
    latent_r2: float  # true latents from factors, linear map fitted on training trials
    co_bps: float  # held-out neurons, NLB definition
    decoding_r2: float  # behaviour from inferred rates, ridge fitted on training trials
    test_nll_per_bin: float  # Poisson NLL per entry of the held-in test spikes
    true_rates_co_bps: float  # co-bps of the true rates: the ceiling on this data


def evaluate(model: LFADS, data: SpikeData) -> tuple[LFADSEval, dict[str, np.ndarray]]:
    """Metrics on ``data``'s test trials (its training trials fit the linear read-outs)."""
    if data.test_spikes is None:
        raise ConfigError("the data has no test trials (test_spikes); LFADS metrics are "
                          "measured on held-out trials")
    if model.cfg.n_neurons != data.n_in or model.cfg.n_heldout != data.n_heldout:
        raise ConfigError(f"the model was trained on {model.cfg.n_neurons}+"
                          f"{model.cfg.n_heldout} neurons, the data has {data.n_in}+"
                          f"{data.n_heldout}")
    rates, factors = infer(model, data.test_spikes)
    nan = float("nan")
    n_in = data.n_in
    held_in = data.test_spikes[..., :n_in]
    nll = -poisson_log_likelihood(rates[..., :n_in], held_in) / held_in.size
    result = LFADSEval(len(data.spikes), len(data.test_spikes), nan, nan, nan, nan, nan, nll,
                       nan)
    if data.test_rates is not None:
        result.rate_r2 = rate_r2(rates, data.test_rates)
        if data.n_heldout:
            result.heldout_rate_r2 = rate_r2(rates[..., n_in:], data.test_rates[..., n_in:])
            result.true_rates_co_bps = co_bps(data.test_rates[..., n_in:],
                                              data.test_spikes[..., n_in:])
    if data.n_heldout and data.test_spikes[..., n_in:].sum() > 0:
        result.co_bps = co_bps(rates[..., n_in:], data.test_spikes[..., n_in:])
    needs_fit = data.latents is not None or data.behavior is not None
    if needs_fit:
        train_rates, train_factors = infer(model, data.spikes)
        if data.latents is not None and data.test_latents is not None:
            result.latent_r2 = latent_r2(train_factors, data.latents, factors, data.test_latents)
        if data.behavior is not None and data.test_behavior is not None:
            result.decoding_r2 = decoding_r2(train_rates, data.behavior, rates,
                                             data.test_behavior)
    return result, {"rates": rates, "factors": factors}


COLUMNS = {
    "rate_r2": "variance-weighted R² of inferred vs true rates over test trials × bins × "
               "neurons (held-in and held-out)",
    "heldout_rate_r2": "the same over held-out neurons only",
    "latent_r2": "R² of the true latents from the factors by a linear map fitted on training "
                 "trials, scored on test trials",
    "co_bps": "bits per spike of the held-out neurons' predicted rates over a per-neuron mean "
              "rate (Neural Latents Benchmark); true_rates_co_bps is the ceiling",
    "decoding_r2": "R² of the behaviour-like variable decoded from inferred rates (ridge, "
                   "fitted on training trials, scored on test trials)",
    "test_nll_per_bin": "Poisson NLL per neuron-bin of the held-in test spikes (lower is better)",
}


def conclusion(result: LFADSEval) -> str:
    if math.isnan(result.rate_r2):
        return (f"Without ground-truth rates, judge the model by co-bps "
                f"({result.co_bps:.3f}) and decoding R² ({result.decoding_r2:.3f}).")
    quality = ("recovers the true rates well" if result.rate_r2 > 0.7 else
               "recovers the true rates partly" if result.rate_r2 > 0.3 else
               "does not recover the true rates")
    return (f"On {result.n_test_trials} test trials the model {quality} (rate R² "
            f"{result.rate_r2:.3f}, co-bps {result.co_bps:.3f} of a possible "
            f"{result.true_rates_co_bps:.3f}).")


def format_report(result: LFADSEval, title: str = "LFADS evaluation") -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key, value in asdict(result).items():
        lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else
                     f"| {key} | {value} |")
    lines += ["", conclusion(result), "", "Columns:"]
    lines += [f"- {key}: {text}" for key, text in COLUMNS.items()]
    if result.n_train_trials < 200:
        lines.append(f"\nWarning: only {result.n_train_trials} training trials; metrics of "
                     "models trained on different amounts of data are not comparable.")
    return "\n".join(lines) + "\n"


def plot_rates(data: SpikeData, rates: np.ndarray, path: Path, n_trials: int = 3,
               n_neurons: int = 4) -> None:
    """Inferred (solid) vs true (dashed) rates of a few test trials and neurons, and a scatter
    of all inferred vs true rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = data.test_rates
    neurons = [0, 1, data.n_in, data.n_in + 1] if data.n_heldout >= 2 else list(range(n_neurons))
    neurons = [n for n in neurons if n < rates.shape[2]][:n_neurons]
    fig, axes = plt.subplots(1, n_trials + 1, figsize=(4 * (n_trials + 1), 3.2))
    t = np.arange(rates.shape[1]) * data.dt
    for col in range(n_trials):
        ax = axes[col]
        for i, n in enumerate(neurons):
            color = f"C{i}"
            label = f"neuron {n}{' (held out)' if n >= data.n_in else ''}"
            ax.plot(t, rates[col, :, n] / data.dt, color=color, label=label)
            if truth is not None:
                ax.plot(t, truth[col, :, n] / data.dt, color=color, ls="--")
        ax.set_title(f"test trial {col}: inferred (—) vs true (--)")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("rate (spikes/s)")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    if truth is not None:
        ax.scatter(truth.ravel() / data.dt, rates.ravel() / data.dt, s=1, alpha=0.2)
        top = float(np.percentile(truth, 99.5) / data.dt)
        ax.plot([0, top], [0, top], color="k", lw=0.8)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("true rate (spikes/s)")
        ax.set_ylabel("inferred rate (spikes/s)")
        ax.set_title("all test rates")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(result: LFADSEval, data: SpikeData, rates: np.ndarray, out: Path,
                 title: str = "LFADS evaluation") -> dict[str, Path]:
    paths = {"json": out / "lfads_eval.json", "markdown": out / "lfads_eval.md",
             "plot": out / "lfads_rates.png"}
    atomic_write_json(paths["json"], {**asdict(result), "columns": COLUMNS,
                                      "conclusion": conclusion(result)})
    atomic_write_bytes(paths["markdown"], format_report(result, title).encode())
    plot_rates(data, rates, paths["plot"])
    return paths
