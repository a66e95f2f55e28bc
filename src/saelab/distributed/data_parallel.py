"""Data parallelism on torch.distributed: each rank trains every SAE on its shard of the batch.

Gradients are averaged with one all-reduce per parameter (issued together, then awaited), and
the few batch-wide statistics go through the same process group (:class:`DataParallel` is the
``BatchGroup`` the architectures see), so N ranks on B/N rows each train the same weights as
one process on B rows, to float tolerance.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelab.architectures.base import BatchGroup

#: Substrings of the errors gloo and NCCL raise when a peer process is gone.
_COMM_ERROR_MARKS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe",
                     "timed out", "timeout")


def dense_view(t: Tensor) -> Tensor:
    """``t``'s memory as a contiguous tensor, for collectives that need one and work in place:
    ``t`` itself, or for a column-major matrix (a latents-major W_enc and its gradient, see
    ``saelab.architectures.base.encoder_weight``) its transpose."""
    if t.is_contiguous():
        return t
    if t.dim() == 2 and t.t().is_contiguous():
        return t.t()
    raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} has no "
                     "contiguous view to reduce in place")


class DataParallel(BatchGroup):
    """The default torch.distributed process group, seen as the ranks sharing each batch."""

    def __init__(self, rank: int, world_size: int, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- batch statistics (BatchGroup) ---------------------------------------------------------
    def mean(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out)
        return out.div_(self.world_size)

    def min(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return out

    def gather(self, t: Tensor) -> Tensor:
        t = t.detach().contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t)
        return torch.cat(parts)

    # -- what the trainer reduces ------------------------------------------------------------
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (a missing one counts as zero)."""
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        handles = [dist.all_reduce(dense_view(p.grad), async_op=True)  # type: ignore[arg-type]
                   for p in params]
        for h in handles:
            h.wait()  # type: ignore[union-attr]
        for p in params:
            p.grad.div_(self.world_size)  # type: ignore[union-attr]

    def any(self, mask: Tensor) -> Tensor:
        """Element-wise OR of a bool tensor over the ranks."""
        flags = mask.to(torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags.bool()

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's module, in place."""
        with torch.no_grad():
            for t in module.state_dict().values():
                dist.broadcast(dense_view(t), src=0)

    def broadcast_float(self, value: float) -> float:
        # NCCL moves only GPU tensors; gloo takes either
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        return float(t)

    def barrier(self) -> None:
        dist.barrier()


def init_from_env(device: str = "cpu", timeout_s: float = 600.0) -> DataParallel | None:
    """Join the process group ``torchrun`` describes in the environment (None outside it).

    Gloo for CPU training, NCCL for CUDA. ``timeout_s`` bounds how long a rank waits for a
    silent peer before it fails with an error instead of hanging.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank if device == "cuda" else torch.device(device))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DataParallel(dist.get_rank(), dist.get_world_size(), local_rank)


def is_comm_error(err: BaseException) -> bool:
    """Whether ``err`` says a collective failed (a peer died, hung or lost its connection)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(mark in text for mark in _COMM_ERROR_MARKS)
