"""Binned spikes from NWB files (pynwb), the format most labs keep their recordings in.

Reads the ``units`` table (spike times per unit) and the ``trials`` table, cuts one window per
trial (aligned to a trials column such as ``start_time`` or ``move_onset_time``), counts spikes
in bins, and optionally samples a behavioural ``TimeSeries`` (e.g. hand velocity) at the bin
centres. Units chosen as held-out neurons go last; a share of trials becomes the test set.
Needs ``pip install 'saelab[lfads]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saelab.config import ConfigError, option
from saelab.lfads.data import SpikeData


@dataclass
class NWBConfig:
    bin_ms: float = option(10.0, "bin width in milliseconds")
    align: str = option("start_time", "trials column each window starts from")
    offset_ms: float = option(0.0, "window start relative to the align time (ms)")
    window_ms: float = option(0.0, "window length in ms (0 = the shortest trial)")
    behavior: str = option("", "TimeSeries to sample at bin centres (name in acquisition or "
                           "any processing module; '' = none)")
    n_heldout: int = option(0, "units held out as co-bps targets (chosen at random)")
    test_share: float = option(0.2, "share of trials kept as test trials (chosen at random)")
    seed: int = option(0, "seed of the held-out units and test trials")


def _find_series(nwb: Any, name: str) -> Any:
    if name in nwb.acquisition:
        return nwb.acquisition[name]
    for module in nwb.processing.values():
        if name in module.data_interfaces:
            return module.data_interfaces[name]
    raise ConfigError(f"no TimeSeries named {name!r} in the NWB file's acquisition or "
                      "processing modules; check the name (--behavior)")


def _series_times(series: Any) -> np.ndarray:
    if series.timestamps is not None:
        return np.asarray(series.timestamps[:], dtype=np.float64)
    n = len(series.data)
    return float(series.starting_time or 0.0) + np.arange(n) / float(series.rate)


def load_nwb(path: str | Path, cfg: NWBConfig | None = None) -> SpikeData:
    cfg = cfg or NWBConfig()
    try:
        from pynwb import NWBHDF5IO
    except ImportError as err:
        raise ConfigError("reading NWB files needs pynwb: pip install 'saelab[lfads]'") from err
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"NWB file {path} does not exist")
    if cfg.bin_ms <= 0 or not 0 <= cfg.test_share < 1:
        raise ConfigError("bin_ms must be > 0 and test_share in [0, 1)")
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        if nwb.units is None or len(nwb.units) == 0:
            raise ConfigError(f"{path} has no units table (sorted spike times); LFADS needs "
                              "spike times per unit")
        if nwb.trials is None or len(nwb.trials) == 0:
            raise ConfigError(f"{path} has no trials table; LFADS trains on trials")
        trials = nwb.trials.to_dataframe()
        if cfg.align not in trials:
            raise ConfigError(f"the trials table has no column {cfg.align!r}; columns: "
                              f"{sorted(trials.columns)}")
        starts = trials[cfg.align].to_numpy(np.float64) + cfg.offset_ms / 1000
        window = cfg.window_ms / 1000 or float(
            (trials["stop_time"] - trials[cfg.align]).min() - cfg.offset_ms / 1000)
        n_bins = int(window * 1000 // cfg.bin_ms)
        if n_bins < 1:
            raise ConfigError(f"the window ({window * 1000:.1f} ms) is shorter than one bin; "
                              "lower --bin-ms or set --window-ms")
        edges = starts[:, None] + np.arange(n_bins + 1)[None, :] * cfg.bin_ms / 1000
        spike_times = [np.sort(np.asarray(nwb.units.get_unit_spike_times(i), dtype=np.float64))
                       for i in range(len(nwb.units))]
        counts = np.stack([np.diff(np.searchsorted(times, edges), axis=1)
                           for times in spike_times], axis=-1).astype(np.float32)
        behavior = None
        if cfg.behavior:
            series = _find_series(nwb, cfg.behavior)
            values = np.asarray(series.data[:], dtype=np.float64).reshape(len(series.data), -1)
            times = _series_times(series)
            centres = (edges[:, :-1] + edges[:, 1:]) / 2
            behavior = np.stack([np.interp(centres, times, values[:, d])
                                 for d in range(values.shape[1])], -1).astype(np.float32)
    gen = np.random.default_rng(cfg.seed)
    n_units = counts.shape[2]
    if not 0 <= cfg.n_heldout < n_units:
        raise ConfigError(f"n_heldout={cfg.n_heldout} must leave input units (the file has "
                          f"{n_units})")
    held = gen.choice(n_units, cfg.n_heldout, replace=False) if cfg.n_heldout else np.array([], int)
    order = np.concatenate([np.setdiff1d(np.arange(n_units), held), np.sort(held)])
    counts = counts[..., order]
    n_test = round(cfg.test_share * len(counts))
    perm = gen.permutation(len(counts))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if len(train) < 2:
        raise ConfigError("fewer than 2 training trials remain; lower test_share")
    meta = {"source": "nwb", "file": str(path), "bin_ms": cfg.bin_ms, "align": cfg.align,
            "unit_order": order.tolist(), "test_trials": test.tolist(),
            "train_trials": train.tolist()}
    return SpikeData(
        spikes=counts[train], n_heldout=cfg.n_heldout, dt=cfg.bin_ms / 1000,
        behavior=None if behavior is None else behavior[train],
        test_spikes=counts[test] if n_test else None,
        test_behavior=None if behavior is None or not n_test else behavior[test], meta=meta)
