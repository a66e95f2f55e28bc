"""Each rank's own rows of every batch of a shared, deterministic activation stream."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from saelab.config import ConfigError
from saelab.data.base import ActivationSource


class RankShard:
    """Rows ``[rank·B/W, (rank+1)·B/W)`` of each global batch of ``source``.

    The global batch sequence is the single-process one, so W ranks together see exactly the
    rows one process would, and a resumed run (any W) continues the same sequence.
    """

    def __init__(self, source: ActivationSource, rank: int, world_size: int) -> None:
        self.source, self.rank, self.world_size = source, rank, world_size

    @property
    def d_in(self) -> int:
        return self.source.d_in

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ConfigError(f"batch_size {batch_size} does not split evenly over "
                              f"{self.world_size} ranks; use a multiple of {self.world_size}")
        return batch_size // self.world_size

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        """Local shards of the global batches of ``batch_size`` rows."""
        n = self.local_batch_size(batch_size)
        lo = self.rank * n
        for batch in self.source.batches(batch_size, start_batch):
            yield batch[lo : lo + n]

    def sample(self, n: int) -> Tensor:
        return self.source.sample(n)
