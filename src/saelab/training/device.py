"""Where training runs: checked device names and batches copied ahead of the compute."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from saelab.config import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a torch.device, checked to exist here.

    Plain ``cuda`` under torchrun means this rank's own GPU (``cuda:LOCAL_RANK``).
    """
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this PyTorch sees no CUDA GPU "
                              "(install a CUDA build of torch, or use --device cpu)")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device cuda:{index} does not exist: this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but Apple's MPS backend is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}: use cpu, cuda, cuda:N or mps")
    return device


def to_device_ahead(batches: Iterator[Tensor], device: torch.device) -> Iterator[Tensor]:
    """Yield ``batches`` on ``device``; on a GPU the next batch is copied from pinned memory
    while the current one is being trained on (the copy is asynchronous)."""
    if device.type == "cpu":
        yield from batches
        return
    pin = device.type == "cuda"

    def send(batch: Tensor) -> Tensor:
        return (batch.pin_memory() if pin else batch).to(device, non_blocking=pin)

    ahead = send(next(batches))
    for batch in batches:
        current, ahead = ahead, send(batch)
        yield current
    yield ahead


def available_devices() -> list[str]:
    """Devices this machine can train on, CPU first (for tests parametrised over devices)."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if torch.backends.mps.is_available():
        out.append("mps")
    return out
