"""Where training metrics go: a JSON-lines file always; TensorBoard and W&B when asked; a
progress line with tokens/s and ETA on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, out_dir: Path, tensorboard: bool = False, wandb_project: str = "",
                 run_config: dict[str, Any] | None = None, enabled: bool = True) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        self._tb: Any = None
        self._wandb: Any = None
        self._fh: Any = None
        if not enabled:  # e.g. ranks other than 0 of a distributed run
            return
        self._fh = self.path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("TensorBoard logging needs `pip install tensorboard`") from err
            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("W&B logging needs `pip install wandb`") from err
            self._wandb = wandb.init(project=wandb_project, config=run_config or {},
                                     dir=str(out_dir))

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        step = int(record.get("step", 0))
        prefix = str(record.get("sae", ""))
        scalars = {f"{prefix}/{k}": v for k, v in record.items()
                   if isinstance(v, int | float) and k not in ("step",)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Progress:
    """A one-line progress report on stderr, at most every ``interval`` seconds."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int = 0,
                 enabled: bool = True, interval: float = 2.0, flops_per_token: float = 0.0,
                 peak_flops: float = 0.0, unit: str = "tokens") -> None:
        self.unit = unit  # what one batch row is (tokens, trials, ...)
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.total = total_steps
        self.batch = batch_size
        self.enabled = enabled
        self.interval = interval
        self.start_time = time.perf_counter()
        self.start_step = start_step
        self.last_print = 0.0

    def tokens_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (step - self.start_step) * self.batch / max(elapsed, 1e-9)

    def update(self, step: int, extra: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_print < self.interval:
            return
        self.last_print = now
        tps = self.tokens_per_second(step)
        remaining = (self.total - step) * self.batch / max(tps, 1e-9)
        pct = 100.0 * step / max(1, self.total)
        if self.peak_flops > 0 and self.flops_per_token > 0:
            extra = f"| {tps * self.flops_per_token / self.peak_flops:.0%} of matmul peak {extra}"
        line = (f"\rstep {step}/{self.total} ({pct:5.1f}%) | {tps:,.0f} {self.unit}/s | "
                f"ETA {_fmt(remaining)} {extra}")
        sys.stderr.write(line[:160].ljust(100))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StageProgress:
    """Progress lines on stderr (flushed, so logs get them): what is being done, how far, the
    rate and an ETA. Silent when disabled."""

    def __init__(self, prefix: str, enabled: bool = True) -> None:
        self.prefix, self.enabled, self.start = prefix, enabled, time.perf_counter()

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.prefix} {time.perf_counter() - self.start:6.1f}s] {text}",
                  file=sys.stderr, flush=True)

    def counter(self, what: str, unit: str = "items", interval: float = 5.0) -> Callable[[int, int], None]:
        """A ``report(done, total)`` callback printing at most every ``interval`` seconds.

        The rate counts from the callback's creation, or from a ``report(0, total)`` call: a
        worker handed the callback before other work runs calls that as it starts, so the rate
        is its own."""
        begin, last = [time.perf_counter()], [0.0]

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == 0:
                begin[0] = now
                return
            if not self.enabled or (now - last[0] < interval and done < total):
                return
            last[0] = now
            rate = done / max(now - begin[0], 1e-9)
            eta = (total - done) / max(rate, 1e-9)
            # slow items (an SAE scored in tens of seconds) read as seconds each, not "0.0/s"
            speed = f"{rate:,.1f} {unit}/s" if rate >= 1 else f"{1 / rate:,.1f} s each"
            self.say(f"{what}: {done}/{total} {unit} ({speed}, ETA {eta:.0f} s)")
        return report
