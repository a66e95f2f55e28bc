"""How fast training runs relative to what this machine's matrix multiplies can do."""

from __future__ import annotations

import time

import torch

_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu",
                        shape: tuple[int, int, int] = (1024, 768, 2048), repeats: int = 3) -> float:
    """FLOP/s of a dense (n×d)@(d×m) product in ``dtype`` on ``device`` — best of ``repeats``.

    Measured once per process and cached: it is the yardstick for the ``matmul_peak_share``
    that the trainer logs.
    """
    key = (device, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    n, d, m = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(d, m, generator=gen).to(device=device, dtype=dtype)
    a @ b  # warm-up (thread pools, kernel choice)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    _PEAK_CACHE[key] = 2.0 * n * d * m / best
    return _PEAK_CACHE[key]
